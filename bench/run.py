"""One benchmark run, top to bottom: clips -> model files -> engines (each in its own process) -> server ->
report -> bench.json, table.txt, bench.png."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from resonance.bench.chart import write_chart
from resonance.bench.config import BenchConfig, Clip
from resonance.bench.engines import RUNTIME
from resonance.bench.floor import ARCHITECTURE_KEYS, measure_peaks
from resonance.bench.models import hf_config, load_manifest, prepare_engines
from resonance.bench.report import build_report, loadavg
from resonance.bench.server_timing import measure_server, write_server_wav
from resonance.bench.table import format_table
from resonance.bench.worker import run_engines
from resonance.constants import OFFLINE_BASE_MODEL
from resonance.errors import ResonanceError

log = logging.getLogger(__name__)
BENCH_FILES = ("bench.json",)  # what marks a folder as a benchmark's: the only kind --force replaces


def run_bench(config: BenchConfig) -> Dict[str, Any]:
    """Run every engine, measure the server, write bench.json/bench.png/table.txt under ``config.out``."""
    from resonance.fsutil import refuse_overlap, refuse_to_overwrite

    # Before minutes of work: never onto what it measures, and --force replaces only an earlier benchmark.
    local_base = config.base_model if config.base_model and Path(config.base_model).exists() else None
    inputs = [("bundle", b) for b in config.bundles] + [
        ("data folder", config.data),
        ("base model", local_base),
    ]
    refuse_overlap(config.out, "benchmark folder", inputs)
    refuse_to_overwrite(config.out, config.force, "benchmark folder", own=BENCH_FILES)
    data = config.data or demo_clips()
    clips = choose_clips(data, config.clips)
    manifests = [load_manifest(b) for b in config.bundles]
    base_model = config.base_model or (manifests[0].base_model if manifests else OFFLINE_BASE_MODEL)
    load_before = loadavg()
    # before the engines load: their processes would share the cores with the measurement
    peaks = measure_peaks(config.threads) if config.floor else None
    with tempfile.TemporaryDirectory(prefix="resonance-bench-") as scratch:
        work = Path(scratch)
        specs, models = prepare_engines(config, base_model, manifests, work, [c.text for c in clips])
        wav = write_server_wav(clips, work / "phrase-2s.wav") if config.server_requests else None
        job = {
            "clips": [c.path for c in clips],
            "threads": config.threads,
            "warmup": config.warmup,
            "fixed_steps": config.decode_steps if config.random_size else None,
            # timestamps are in the model's vocabulary but not in tokenizer.json: the model knows its size
            "vocab_size": hf_config(models.hf_dir)["vocab_size"],
            "language": "zh",
        }
        results = run_engines(specs, job, len(clips), config.interleave, work)
        servers = []
        if wav is not None:
            for spec, result in results:
                if spec.engine == RUNTIME and not spec.phrases and result.get("status") == "ok":
                    try:
                        servers.append(measure_server(spec, wav, config, work))
                    except ResonanceError as exc:  # the server would not start: keep the engines' results
                        log.warning("server with %s: %s", spec.label, exc)
                        servers.append({"label": spec.label, "bundle": spec.model, "error": str(exc)})
        architecture = {k: hf_config(models.hf_dir)[k] for k in ARCHITECTURE_KEYS}
    floor = {"peaks": peaks, "architecture": architecture} if peaks else None
    report = build_report(
        config, base_model, manifests, clips, results, servers, load_before, str(data), models.adapter, floor
    )
    write_outputs(report, config.out, config.force)
    return report


def demo_clips() -> Path:
    """The built-in demo phrases (take2), where the package installed them."""
    import resonance

    return Path(resonance.__file__).parent / "demo_data" / "take2"


def choose_clips(data: Path, limit: Optional[int]) -> List[Clip]:
    """The first ``limit`` labelled clips of ``data`` (labels.json order) with their durations."""
    import soundfile as sf

    from resonance.data.labels import load_labels

    utterances = load_labels(Path(data))[:limit]
    return [Clip(str(u.audio), u.text, float(sf.info(str(u.audio)).duration)) for u in utterances]


def write_outputs(report: Dict[str, Any], out: Path, force: bool) -> None:
    """bench.json, bench.png and table.txt appear together in ``out`` (one rename), or not at all."""
    from resonance.fsutil import atomic_directory, write_json_atomic, write_text_atomic

    with atomic_directory(Path(out), force, "benchmark folder", own=BENCH_FILES) as tmp:
        write_json_atomic(tmp / "bench.json", report)
        write_text_atomic(tmp / "table.txt", format_table(report) + "\n")
        write_chart(report, tmp / "bench.png")
