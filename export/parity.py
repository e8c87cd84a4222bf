"""Parity: does the exported bundle, run by the real runtime, transcribe like the PyTorch model it came from?

Both sides get the same log-mel features (the runtime's numpy ones; features are checked against
WhisperFeatureExtractor by their own test) and the same decoding rules: greedy, language and task forced, no
timestamps, the same suppressed tokens, the same token budget, no anti-loop guards. Then

* fp32 must give the **same token ids** on every clip: anything else is an export bug;
* int8/fp16 change the numbers, so greedy paths may part; the corpus CER between the two transcripts must stay
  within ``tolerance`` (default 0.10), and is reported either way.

The result goes into the manifest (``parity``) so a device can show how the bundle was checked.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from resonance.constants import SAMPLE_RATE
from resonance.data.labels import Utterance
from resonance.errors import ResonanceError
from resonance.progress import progress

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.10  # max CER between PyTorch and the runtime for int8/fp16
PARITY_MAX_NEW_TOKENS = 48  # enough for any short phrase; a random test model runs to this limit
MAX_CLIPS = 8  # parity is a check, not an evaluation: keep the export fast
MIN_CLIP_SECONDS = 0.1  # shorter clips (an empty WAV, a click) are left out: the runtime hears nothing


class ParityError(ResonanceError):
    """The exported bundle does not reproduce the PyTorch model."""


def synthetic_clips(sample_rate: int = 16000, window_seconds: float = 30.0) -> List[np.ndarray]:
    """Deterministic speech-like test signals (a glide, a vowel-like harmonic tone, noise bursts)."""
    rng = np.random.default_rng(1234)

    def t(seconds: float) -> np.ndarray:
        return np.arange(int(min(seconds, window_seconds) * sample_rate)) / sample_rate

    glide = t(1.5)
    harmonic = t(2.5)
    bursts = t(1.0)
    clips = [
        0.3 * np.sin(2 * np.pi * (150 * glide + 200 * glide**2)),
        sum(0.15 / k * np.sin(2 * np.pi * 180 * k * harmonic) for k in range(1, 6))
        * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * harmonic)),
        0.2 * rng.standard_normal(bursts.size) * (np.sin(2 * np.pi * 4 * bursts) > 0),
    ]
    return [c.astype(np.float32) for c in clips]


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray
    text: Optional[str] = None  # what was said, when the clip comes from a labelled folder
    name: Optional[str] = None  # its file, named in a parity failure (None: a synthetic clip)


def source_path(source: Union[Path, Utterance]) -> Path:
    """The file or folder a parity-clip source names (an :class:`Utterance`: its recording)."""
    return Path(source.audio) if isinstance(source, Utterance) else Path(source)


def load_clips(
    paths: Optional[Sequence[Union[Path, Utterance]]], limit: int = MAX_CLIPS
) -> Tuple[List[Clip], str]:
    """The clips to check on and where they came from.

    ``paths`` are audio files or folders; a folder in the guide's layout (labels.json) gives labelled clips, and
    so does an :class:`Utterance` (a recording and what was said: `resonance update`'s held-out recordings).
    None or empty: the synthetic clips. At most ``limit`` clips, spread over what was given.
    """
    from resonance.audio import load_audio

    if not paths:
        return [Clip(a) for a in synthetic_clips()], "synthetic"
    found: List[Tuple[Path, Optional[str]]] = []
    for path in paths:
        found.extend([(path.audio, path.text)] if isinstance(path, Utterance) else _clips_in(Path(path)))
    if not found:
        raise ResonanceError(
            f"no audio files in {[str(source_path(p)) for p in paths]}", "pass WAV files or a folder of them"
        )
    step = max(1, len(found) // limit)
    chosen = found[::step][:limit]
    clips = _with_audio([Clip(load_audio(f), text, str(f)) for f, text in chosen])
    labelled = " labelled" if all(c.text is not None for c in clips) else ""
    sources = ", ".join(str(source_path(p)) for p in paths)
    return clips, f"{len(clips)} of {len(found)}{labelled} clips from {sources}"


def _with_audio(clips: List[Clip]) -> List[Clip]:
    """The clips long enough to compare on: the runtime rightly transcribes an empty or click-short clip as
    nothing (no model run), while PyTorch still generates, so such a clip would fail a correct export."""
    min_samples = round(MIN_CLIP_SECONDS * SAMPLE_RATE)
    kept = [c for c in clips if c.audio.size >= min_samples]
    for clip in clips:
        if clip.audio.size < min_samples:
            seconds = clip.audio.size / SAMPLE_RATE
            log.warning(
                "parity: leaving out %s: %.3f s of audio (under %s s)", clip.name, seconds, MIN_CLIP_SECONDS
            )
    if not kept:
        names = ", ".join(str(c.name) for c in clips)
        raise ResonanceError(
            f"no parity clip has {MIN_CLIP_SECONDS} s of audio or more: {names}",
            "pass recordings of the person speaking (--parity-clips), or leave it out for the synthetic clips",
        )
    return kept


def _clips_in(path: Path) -> List[Tuple[Path, Optional[str]]]:
    from resonance.data.labels import AUDIO_EXTENSIONS, LABELS_FILE, load_labels

    if not path.is_dir():
        return [(path, None)]
    if (path / LABELS_FILE).is_file():
        return [(u.audio, u.text) for u in load_labels(path)]
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    return [(f, None) for f in files]


def check_parity(
    model,
    bundle_dir: Path,
    clips: Optional[Sequence[Union[Path, Utterance]]] = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_new_tokens: int = PARITY_MAX_NEW_TOKENS,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    show_progress: bool = False,
) -> Dict[str, Any]:
    """Compare PyTorch ``model`` with the runtime on ``bundle_dir`` (on ``providers``: `resonance gpu-check`
    checks an fp16 bundle on the CUDA provider); return the report or raise ParityError.
    ``show_progress``: a bar over the clips on stderr."""
    from resonance.runtime.bundle import load_manifest
    from resonance.runtime.decoding import PLAIN
    from resonance.runtime.transcriber import Transcriber

    if not 0.0 <= tolerance <= 1.0:
        raise ResonanceError(f"parity tolerance {tolerance} is not a CER in [0, 1]", "use e.g. 0.10")
    manifest = load_manifest(bundle_dir, verify=False)
    options = replace(PLAIN, max_new_tokens=max_new_tokens, to_simplified=False)
    transcriber = Transcriber(bundle_dir, providers, options=options, verify=False)
    loaded, source = load_clips(clips)
    rows = []
    with _reference_encoder(model, manifest.audio.dynamic_window):
        for clip in progress(loaded, "parity", unit="clip") if show_progress else loaded:
            audio = clip.audio[: transcriber.window_samples]  # parity is about the model: one window per clip
            runtime = list(transcriber.transcribe(audio).tokens)
            features = transcriber.features(audio)
            reference = torch_generate(
                model, features, manifest.tokens, manifest.language, manifest.task, max_new_tokens
            )
            rows.append(Row(reference, runtime, clip.text, clip.name))
    report = judge(
        rows,
        manifest.precision,
        tolerance,
        source,
        transcriber.tokenizer.decode,
        max_new_tokens,
        manifest.quantization,
    )
    return {**report, "providers": transcriber.providers}  # where the runtime really ran (after any fallback)


def _reference_encoder(model, dynamic_window: bool):
    """PyTorch must see what the runtime sees: with a dynamic window, the shorter (bucketed) input."""
    if not dynamic_window:
        return contextlib.nullcontext()
    from resonance.export.dynamic_window import sliced_positions

    return sliced_positions(model)


@dataclass(frozen=True)
class Row:
    torch: List[int]  # PyTorch generate's tokens
    runtime: List[int]  # the bundle's tokens
    label: Optional[str] = None
    name: Optional[str] = None  # the clip's file (None: a synthetic clip)


def judge(
    rows: Sequence[Row],
    precision: str,
    tolerance: float,
    source: str,
    decode,
    max_new_tokens: int,
    quantization: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The parity report for ``rows``; raises ParityError when the bundle fails. ``quantization``: the
    manifest's int8 settings, so the advice names only options the export did not already use.

    fp32: every clip token-identical. int8/fp16 on labelled clips: the accuracy lost, CER(labels, runtime) -
    CER(labels, PyTorch), within ``tolerance``; on unlabelled clips: CER(PyTorch, runtime) within it. (A
    generic model on dysarthric speech is unsure of every word, so small numeric changes pick other, equally
    wrong words: agreement is then low although accuracy is unchanged. The accuracy loss is what users feel.)
    """
    torch_texts = [decode(r.torch) for r in rows]
    runtime_texts = [decode(r.runtime) for r in rows]
    identical = sum(r.torch == r.runtime for r in rows)
    agreement_cer = _cer(torch_texts, runtime_texts)
    report: Dict[str, Any] = {
        "passed": True,
        "precision": precision,
        "clips": len(rows),
        "source": source,
        "tokens_identical": identical,
        "cer": round(agreement_cer, 4),  # between the PyTorch and the runtime transcripts
        "max_new_tokens": max_new_tokens,
    }
    labelled = bool(rows) and all(r.label is not None for r in rows)
    if labelled:
        labels = [r.label or "" for r in rows]
        report["cer_labels_pytorch"] = round(_cer(labels, torch_texts), 4)
        report["cer_labels_runtime"] = round(_cer(labels, runtime_texts), 4)
    log.info(
        "parity (%s): %d/%d clips token-identical, CER %.3f", precision, identical, len(rows), agreement_cer
    )
    if precision == "fp32":
        report.update(criterion="identical tokens", tolerance=0.0)
        if identical < len(rows):
            raise ParityError(
                _first_difference(rows), "this is an export bug: report it with the models used"
            )
        return report
    if labelled:
        loss = report["cer_labels_runtime"] - report["cer_labels_pytorch"]
        report.update(criterion="accuracy loss vs labels", accuracy_loss=round(loss, 4), tolerance=tolerance)
        measured, what = loss, "loses accuracy against the labels: CER"
    else:
        report.update(criterion="CER between PyTorch and runtime", tolerance=tolerance)
        measured, what = agreement_cer, "transcripts differ from PyTorch's by CER"
    log.info("parity (%s): %s %.3f (tolerance %.3f)", precision, report["criterion"], measured, tolerance)
    if measured > tolerance:
        other = "int8" if precision == "fp16" else "fp16 (on a GPU)"
        untried = _untried_int8_options(quantization or {}) if precision == "int8" else []
        try_int8 = f"try {' or '.join(untried)}, " if untried else ""
        raise ParityError(
            f"the {precision} bundle {what} {measured:.3f} > tolerance {tolerance:.3f}",
            f"{try_int8}export with --quantize none (fp32) or {other}, check on the person's own labelled "
            "clips (--parity-clips DATA_FOLDER), or raise --parity-tolerance",
        )
    return report


def _untried_int8_options(quantization: Mapping[str, Any]) -> List[str]:
    """The int8 options that can help, less those this bundle was already exported with."""
    untried = []
    if quantization.get("output_projection") != "fp32":
        untried.append("--int8-output fp32 (float logits)")
    if quantization.get("int8_preset") != "per-tensor":
        untried.append("--int8-preset per-tensor")
    return untried


def _first_difference(rows: Sequence[Row]) -> str:
    index = next(i for i, r in enumerate(rows) if r.torch != r.runtime)
    ref, hyp = rows[index].torch, rows[index].runtime
    at = next((i for i, (a, b) in enumerate(zip(ref, hyp)) if a != b), min(len(ref), len(hyp)))
    name = f" ({rows[index].name})" if rows[index].name else ""
    return (
        f"fp32 bundle differs from PyTorch on clip {index + 1}/{len(rows)}{name} at token {at}: "
        f"PyTorch {ref[at : at + 5]} vs runtime {hyp[at : at + 5]}"
    )


def _cer(references: List[str], hypotheses: List[str]) -> float:
    """Corpus CER (train.evaluate's normalisation); a clip with an empty reference but some output counts
    its whole output as errors (train.evaluate.cer skips empty references)."""
    from resonance.text import normalize_for_cer
    from resonance.train.evaluate import cer

    refs = [normalize_for_cer(r) for r in references]
    hyps = [normalize_for_cer(h) for h in hypotheses]
    extra = sum(len(h) for r, h in zip(refs, hyps) if not r)
    kept = [(r, h) for r, h in zip(refs, hyps) if r]
    total = sum(len(r) for r, _ in kept)
    if not kept:
        return 0.0 if extra == 0 else 1.0
    score = cer([r for r, _ in kept], [h for _, h in kept])
    return (score * total + extra) / total


def torch_generate(
    model, features: np.ndarray, tokens, language: str, task: str, max_new_tokens: int
) -> List[int]:
    """PyTorch ``generate`` with the runtime's rules; the generated ids without prompt and eot."""
    import copy

    import torch
    from transformers.utils import logging as hf_logging

    config = copy.deepcopy(model.generation_config)
    # Everything above eot (languages, tasks, timestamps...) is masked by the runtime: do the same here.
    config.suppress_tokens = sorted(
        set(tokens.suppress) | set(range(tokens.eot + 1, model.config.vocab_size))
    )
    config.begin_suppress_tokens = list(tokens.begin_suppress)
    # generate(language=...) looks these up; a model saved without them gets them from the bundle's ids.
    config.lang_to_id = {**(getattr(config, "lang_to_id", None) or {}), f"<|{language}|>": tokens.language}
    config.task_to_id = {"transcribe": tokens.transcribe, "translate": tokens.translate}
    config.no_timestamps_token_id = tokens.no_timestamps
    config.is_multilingual = True
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "attention mask not set" etc.: expected for single unpadded inputs
    try:
        with torch.no_grad():
            out = model.generate(
                # The encoder runs here, not inside generate: generate would pad the input to the model's
                # window, and with a dynamic window the runtime encodes the shorter input.
                encoder_outputs=model.get_encoder()(torch.from_numpy(np.asarray(features, dtype=np.float32))),
                generation_config=config,
                language=language,
                task=task,
                return_timestamps=False,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    ids = out[0].tolist()
    prompt = list(tokens.sot_sequence)
    if ids[: len(prompt)] == prompt:  # older transformers return the prompt too
        ids = ids[len(prompt) :]
    if tokens.eot in ids:
        ids = ids[: ids.index(tokens.eot)]
    return ids
