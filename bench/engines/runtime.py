"""Our runtime: each bundle as it is (its precision and window), and again with the phrase board."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from resonance.bench.config import GENERIC, PERSONAL, EngineSpec, ModelFiles, window_label
from resonance.bench.engines import RUNTIME
from resonance.bench.engines.common import Transcribe, device


def specs(models: ModelFiles, names: Sequence[str]) -> List[EngineSpec]:
    rows = []
    for bundle, m in zip(models.bundles, models.manifests):
        label = f"runtime {Path(bundle).name}"
        win = window_label(m.audio.window_seconds, m.audio.dynamic_window)
        table = PERSONAL if m.adapter and models.personal_dir else GENERIC
        rows.append(EngineSpec(RUNTIME, label, str(bundle), m.precision, win, table=table))
        if models.config.phrase_list:
            board = phrase_board([*m.phrases, *models.texts], models.config.phrase_list)
            both = f"{label} both/{len(board)}"
            rows.append(EngineSpec(RUNTIME, both, str(bundle), m.precision, win, phrases=board, table=table))
    return rows


def phrase_board(known: Sequence[str], size: int) -> Tuple[str, ...]:
    """A phrase list of ``size``: the distinct ``known`` phrases, then polite variants of them (请…, …吧, …了吗)
    until it is long enough. Latency depends on the list's length and how alike its phrases are, which the
    variants keep realistic (a real board has 我想喝水 and 我想喝茶)."""
    phrases = list(dict.fromkeys(p for p in known if p))[:size] or ["我想喝水"]
    seen = set(phrases)
    index = 0
    while len(phrases) < size:  # variants of the known phrases first, then of the variants
        for pattern in ("请{}", "{}吧", "{}了吗", "现在{}", "我还{}"):
            variant = pattern.format(phrases[index])
            if variant not in seen and len(phrases) < size:
                seen.add(variant)
                phrases.append(variant)
        index += 1
    return tuple(phrases)


def load(job: Dict[str, Any]) -> Tuple[Transcribe, str]:
    from dataclasses import replace

    import onnxruntime

    from resonance.runtime.decoding import GREEDY, PLAIN
    from resonance.runtime.transcriber import Transcriber

    steps = job["fixed_steps"]
    # Greedy, as every other engine in the table decodes (the served default is 4 beams: runtime/decoding.py).
    # Random weights: no guard may stop decoding early, so every engine decodes the same number of tokens.
    options = replace(PLAIN, max_new_tokens=steps) if steps else GREEDY
    # on "cuda" the Transcriber keeps the KV cache on the GPU (IOBinding) by itself
    cpu = ("CPUExecutionProvider",)
    providers = ("CUDAExecutionProvider", *cpu) if device(job) == "cuda" else cpu
    transcriber = Transcriber(job["spec"]["model"], providers, job["threads"], options)
    board = list(job["spec"].get("phrases") or [])

    def run(audio: Any) -> Tuple[str, int, Dict[str, float]]:
        if board:  # the phrase board's own cost on top of the same free transcription
            result = transcriber.transcribe(audio, mode="both", phrases=board)
        else:
            result = transcriber.transcribe(audio)
        return result.text, len(result.tokens), result.timings  # features, encoder, decoder ms

    return run, f"onnxruntime {onnxruntime.__version__}"
