"""CER the way people judge a transcript: Simplified Chinese, punctuation and spaces ignored."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from resonance.text import normalize_for_cer


@dataclass(frozen=True)
class Scored:
    rel: str
    reference: str
    hypothesis: str
    cer: float


def cer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus CER (total edits / total reference characters) after normalisation."""
    import jiwer

    refs = [normalize_for_cer(r) for r in references]
    hyps = [normalize_for_cer(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]  # jiwer rejects empty references
    if not pairs:
        return 0.0
    return float(jiwer.cer([r for r, _ in pairs], [h for _, h in pairs]))


def score(examples, hypotheses: list[str]) -> tuple[float, list[Scored]]:
    rows = [Scored(e.rel, e.text, h, cer([e.text], [h])) for e, h in zip(examples, hypotheses)]
    return cer([e.text for e in examples], hypotheses), rows


def max_new_tokens(seconds: float, limit: int = 440) -> int:
    """Anti-loop guard: a phrase of s seconds has far fewer than 6 tokens per second (plus slack)."""
    return int(min(limit, 8 + 6 * seconds))


def transcribe_batch(
    model,
    feature_extractor,
    tokenizer,
    examples,
    window_seconds: float,
    language: str,
    task: str,
    batch_size: int = 16,
    num_beams: int = 1,
) -> list[str]:
    """PyTorch decoding: greedy (the reference the ONNX runtime is checked against), or beam search."""
    import torch

    from resonance.train.data import collate

    model.eval()
    texts: list[str] = []
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        features, _, _ = collate(batch, feature_extractor, window_seconds, sot_id=0, pad_id=0)
        longest = max(e.seconds for e in batch)
        with torch.no_grad():
            ids = model.generate(
                input_features=features.to(device=device, dtype=dtype),
                language=language,
                task=task,
                max_new_tokens=max_new_tokens(longest),
                do_sample=False,
                num_beams=num_beams,
            )
        texts.extend(tokenizer.batch_decode(ids, skip_special_tokens=True))
    return [t.strip() for t in texts]


def as_rows(rows: list[Scored]) -> list[dict]:
    return [asdict(r) for r in rows]
