"""The CTranslate2 baselines: int8 and fp32, greedy, no VAD, one temperature.

On the generic model: faster-whisper's pipeline, as its users run it. On a model with a shortened window
(the personal table): CTranslate2's own ``Whisper.generate`` on faster-whisper's features. CTranslate2
takes the short window directly (its encoder expects twice the converted position table's length in frames,
layers/whisper.cc), but faster-whisper 1.2 pads every segment to 3000 frames (``audio.pad_or_trim``), which
that encoder refuses.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from resonance.bench.config import PERSONAL, EngineSpec, ModelFiles
from resonance.bench.engines import FW_FP32, FW_INT8
from resonance.bench.engines.common import Transcribe, device, token_budget
from resonance.constants import SAMPLE_RATE

log = logging.getLogger(__name__)

PRECISION = {FW_INT8: "int8", FW_FP32: "fp32"}
FW_PROMPT_TOKENS = 4  # <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>
FULL_WINDOW_FRAMES = 3000  # what faster-whisper pads every segment to


def specs(models: ModelFiles, names: Sequence[str]) -> List[EngineSpec]:
    ct2 = ct2_model(models.hf_dir, models.store / "ct2", models.pypi_ct2)
    chosen = [(e, PRECISION[e]) for e in (FW_INT8, FW_FP32) if e in names]
    rows = [EngineSpec(e, f"faster-whisper {p}", str(ct2), p, models.window) for e, p in chosen]
    if models.personal_dir:  # the personal bundles' merged weights, converted, at their window
        personal = ct2_model(models.personal_dir, models.store / "ct2-personal", None)
        rows[:0] = [
            EngineSpec(e, f"CTranslate2 {p}", str(personal), p, models.personal_window, table=PERSONAL)
            for e, p in chosen
        ]
    return rows


def ct2_model(hf_dir: Path, out: Path, pypi_name: Optional[str]) -> Path:
    """The CTranslate2 form of the model: the cached PyPI download, else converted from ``hf_dir`` (fp32;
    faster-whisper quantises to int8 at load, as its users do)."""
    if pypi_name:
        from resonance.train.pypi_models import cached_ct2_dir

        return cached_ct2_dir(pypi_name)
    if (out / "model.bin").is_file():
        return out
    from resonance.errors import require

    converters = require("ctranslate2.converters", "dev", "the faster-whisper baseline")
    log.info("converting %s to CTranslate2 (%s)", hf_dir, out)
    files = [f for f in ("tokenizer.json", "preprocessor_config.json") if (hf_dir / f).is_file()]
    tmp = out.with_name(out.name + ".tmp")
    converters.TransformersConverter(str(hf_dir), copy_files=files).convert(str(tmp), force=True)
    os.replace(tmp, out)
    return out


def ct2_max_new_tokens(tokens: int) -> int:
    """faster-whisper's ``max_new_tokens`` that lets CTranslate2 decode up to ``tokens`` tokens.

    faster-whisper passes max_length = prompt + max_new_tokens, and CTranslate2's whisper.cc decodes at most
    min(max_length / 2, max_length - prompt) tokens (OpenNMT/CTranslate2#1856; measured on 4.8.5:
    max_new_tokens 20 -> 12 tokens). Without this, faster-whisper would get a smaller cap than the others.
    """
    return max(tokens, 2 * tokens - FW_PROMPT_TOKENS)


def load(job: Dict[str, Any]) -> Tuple[Transcribe, str]:
    from resonance.errors import require

    fw = require("faster_whisper", "dev", "the faster-whisper baseline")
    spec, steps = job["spec"], job["fixed_steps"]
    # fp16: float16 on CUDA (gpu-check); CTranslate2 has no float16 kernels on the CPU
    compute_type = {"int8": "int8", "fp16": "float16"}.get(spec["precision"], "float32")
    model = fw.WhisperModel(
        spec["model"],
        device=device(job),
        compute_type=compute_type,
        cpu_threads=job["threads"],
        num_workers=1,
    )
    eot = model.hf_tokenizer.token_to_id("<|endoftext|>")
    # -1: faster-whisper's default set. Random weights: EOT and every special id above it too, so that it
    # decodes exactly `steps` text tokens, like the other engines.
    suppress = [-1, *range(eot, job["vocab_size"])] if steps else [-1]
    if model.feature_extractor.nb_max_frames != FULL_WINDOW_FRAMES:
        return ct2_generate(model, job, suppress), f"ctranslate2 {ctranslate2_version()}"

    def run(audio: np.ndarray) -> Tuple[str, int]:
        segments, _info = model.transcribe(
            audio,
            language=job["language"],
            task="transcribe",
            beam_size=1,
            best_of=1,
            temperature=0.0,  # one greedy pass: the temperature fallback would decode again
            compression_ratio_threshold=None,
            log_prob_threshold=None,
            no_speech_threshold=None,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            suppress_tokens=suppress,
            max_new_tokens=ct2_max_new_tokens(steps or token_budget(audio.size / SAMPLE_RATE)),
        )
        segments = list(segments)  # a generator: decoding happens here
        return "".join(s.text for s in segments).strip(), sum(len(s.tokens) for s in segments)

    return run, f"faster-whisper {fw.__version__}"


def ct2_generate(model, job: Dict[str, Any], suppress: List[int]) -> Transcribe:
    """CTranslate2's ``Whisper.generate`` on one window of faster-whisper's features: the decoding
    faster-whisper would run (greedy, the same prompt, suppressed tokens and token cap) without its 30 s
    padding."""
    import ctranslate2
    from faster_whisper.audio import pad_or_trim

    extractor, tokenizer = model.feature_extractor, model.hf_tokenizer
    prompt = [
        tokenizer.token_to_id(t)
        for t in ("<|startoftranscript|>", f"<|{job['language']}|>", "<|transcribe|>", "<|notimestamps|>")
    ]
    eot = tokenizer.token_to_id("<|endoftext|>")
    steps = job["fixed_steps"]

    def run(audio: np.ndarray) -> Tuple[str, int]:
        features = pad_or_trim(extractor(audio), extractor.nb_max_frames)[np.newaxis]
        budget = ct2_max_new_tokens(steps or token_budget(audio.size / SAMPLE_RATE))
        result = model.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
            [prompt],
            beam_size=1,
            max_length=len(prompt) + budget,
            suppress_tokens=suppress,
            suppress_blank=True,
        )
        ids = [t for t in result[0].sequences_ids[0] if t < eot]
        return tokenizer.decode(ids).strip(), len(ids)

    return run


def ctranslate2_version() -> str:
    import ctranslate2

    return ctranslate2.__version__
