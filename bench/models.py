"""The model files a run starts from: the baselines' Hugging Face folder, the runtime's bundles, and for
``--model-size small`` a randomly initialised model exported once into the cache; then each engine's rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from resonance.bench.config import PERSONAL, BenchConfig, EngineSpec, ModelFiles, window_label
from resonance.bench.engines import ENGINES, engine_module
from resonance.constants import OFFLINE_BASE_MODEL, PRECISION_OF
from resonance.errors import ResonanceError

log = logging.getLogger(__name__)

# bundle precision -> export_bundle(quantize=)
QUANTIZE_FOR = {precision: quantize for quantize, precision in PRECISION_OF.items()}


def prepare_engines(
    config: BenchConfig, base_model: str, manifests, work: Path, texts: Sequence[str] = ()
) -> Tuple[List[EngineSpec], ModelFiles]:
    """Each engine's rows (in the table's order, ``ENGINES``) and the model files they run."""
    models = model_files(config, base_model, manifests, work, texts)
    specs: List[EngineSpec] = []
    modules: Dict[str, List[str]] = {}  # engine module -> the asked engine names it serves
    for name in (e for e in ENGINES if e in config.engines):
        modules.setdefault(engine_module(name).__name__, []).append(name)
    for names in modules.values():
        specs.extend(engine_module(names[0]).specs(models, names))
    specs = [s for s in specs if s.table in config.tables]
    if not specs:
        raise ResonanceError(
            f"nothing to time in the {' and '.join(config.tables)} table",
            "--tables personal needs a personal bundle and its adapter (--adapter); or add --tables generic",
        )
    return specs, models


def model_files(
    config: BenchConfig, base_model: str, manifests, work: Path, texts: Sequence[str] = ()
) -> ModelFiles:
    from resonance.train.base_model import resolve_base_model

    base_dir = Path(resolve_base_model(base_model))
    if not base_dir.is_dir():  # a hub id: the baselines must read the same local files offline
        raise ResonanceError(
            f"the baselines need a local model folder, not the hub id '{base_model}'",
            f"pass --base-model {OFFLINE_BASE_MODEL} or a Hugging Face model folder",
        )
    if config.random_size:
        cache = _random_cache(config.random_size, base_dir)
        hf_dir, pypi_ct2, store = cache / "hf", None, cache
        precisions = list(dict.fromkeys(m.precision for m in manifests)) or ["fp32", "int8"]
        bundles = [_random_bundle(hf_dir, cache / f"bundle-{p}", p) for p in precisions]
        manifests = [load_manifest(b) for b in bundles]
    else:
        hf_dir, bundles, store = base_dir, list(config.bundles), work
        pypi_ct2 = base_model if base_model.startswith("pypi:") else None
    wanted = PERSONAL in config.tables and not config.random_size
    adapter = personal_adapter(config, manifests) if wanted else None
    personal_dir = personal_model(adapter, store / "personal") if adapter else None
    return ModelFiles(
        config,
        hf_dir,
        tuple(Path(b) for b in bundles),
        tuple(manifests),
        store,
        model_window(hf_dir),
        pypi_ct2,
        tuple(texts),
        personal_dir,
        model_window(personal_dir) if personal_dir else "",
        adapter,
    )


def model_window(hf_dir: Path) -> str:
    """The audio window of a Hugging Face Whisper folder, e.g. "30 s" (50 encoder positions per second)."""
    return window_label(hf_config(hf_dir).get("max_source_positions", 1500) / 50)


def personal_adapter(config: BenchConfig, manifests) -> Optional[Path]:
    """The adapter the personal table's baselines run: ``--adapter``, else the first bundle's that still
    exists (a manifest records the folder as export was given it: relative to where export ran)."""
    if config.adapter is not None:
        if not Path(config.adapter).is_dir():
            raise ResonanceError(
                f"--adapter {config.adapter} is not a folder",
                "pass the adapter folder the bundles were exported from (made by `resonance train`)",
            )
        return Path(config.adapter)
    named = [m.adapter for m in manifests if m.adapter]
    found = next((Path(a) for a in named if Path(a).is_dir()), None)
    if named and found is None:
        log.warning(
            "the bundles' adapter %s is not here: the baselines run only the generic model (pass --adapter)",
            named[0],
        )
    return found


def personal_model(adapter: Path, out: Path) -> Path:
    """The adapter merged into the base model it was trained on (as export does) at the window it was
    trained with, saved as a Hugging Face folder whose feature extractor pads to that window: what PyTorch,
    Optimum and CTranslate2 all run."""
    from resonance.train.personal import load_personal_model
    from resonance.train.window import window_of

    log.info("merging %s into its base model for the baselines (%s)", adapter, out)
    model, processor = load_personal_model(adapter, merge=True)
    extractor = processor.feature_extractor
    seconds = window_of(model)
    if extractor.chunk_length != seconds:  # the extractor pads to its chunk: make it the model's window
        settings = {**extractor.to_dict(), "chunk_length": int(seconds)}
        processor.feature_extractor = type(extractor)(**settings)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_manifest(bundle: Path):
    from resonance.runtime.bundle import load_manifest

    return load_manifest(Path(bundle), verify=False)


def hf_config(hf_dir: Path) -> Dict[str, Any]:
    return json.loads((Path(hf_dir) / "config.json").read_text(encoding="utf-8"))


def _random_cache(size: str, base_dir: Path) -> Path:
    """cache/bench/random-whisper-SIZE/hf: random weights with the base model's vocabulary (made once)."""
    from resonance.fsutil import cache_root
    from resonance.train.testing import save_random_whisper

    cache = cache_root() / "bench" / f"random-whisper-{size}"
    if not (cache / "hf" / "config.json").is_file():
        log.info("creating a randomly initialised whisper-%s in %s", size, cache / "hf")
        save_random_whisper(cache / "hf", base_dir / "tokenizer.json", size=size)
    return cache


def _random_bundle(hf_dir: Path, out: Path, precision: str) -> Path:
    from resonance.export.onnx_export import export_bundle

    if not (out / "manifest.json").is_file():
        log.info("exporting the random model to a %s bundle (%s)", precision, out)
        # Random weights have near-tied logits, so int8 may pick other tokens than PyTorch: only latency
        # matters here, hence any CER between the two passes the parity check.
        export_bundle(str(hf_dir), out, quantize=QUANTIZE_FOR[precision], parity_tolerance=1.0, force=True)
    return out
