"""Is model B really better than model A on these recordings, or could it be luck? A paired bootstrap over phrases.

With 30 recordings the validation split holds 3 phrases (10 characters): one character more or less moves the
accuracy by 10 points, so "70 % -> 70 %" says nothing either way. Both models are measured on the same
recordings, so the question is about the *differences*, phrase by phrase. The phrases are resampled with
replacement (every recording of a phrase stays together: they are not independent) and the change in character
accuracy is recomputed each time; the middle 95 % of those changes is the interval reported.

A percentile bootstrap on a handful of phrases is too sure of itself (3 phrases that all improved give an
interval that excludes 0). The exact paired test that flips the sign of each phrase's difference bounds what
n phrases can show: its smallest two-sided p-value is 2 / 2**n, above 0.05 for n < 6. So with fewer than
:data:`MIN_DECISIVE_PHRASES` phrases the result is always "inconclusive", whatever the interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Sequence

import numpy as np

BETTER = "better"  # B makes significantly fewer mistakes than A
WORSE = "worse"  # B makes significantly more mistakes than A
INCONCLUSIVE = "inconclusive"  # the recordings cannot tell
MIN_DECISIVE_PHRASES = 6  # 2 / 2**6 = 0.031 < 0.05: the fewest phrases a sign-flip test can decide on
RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class PhraseErrors:
    """One phrase's recordings, scored by both models: character errors (edits) and reference characters."""

    text: str
    chars: int
    errors_a: int
    errors_b: int


@dataclass(frozen=True)
class Comparison:
    """Model B against model A, in character accuracy points (1 - CER, as a fraction)."""

    accuracy_a: float
    accuracy_b: float
    change: float  # accuracy_b - accuracy_a
    low: float  # the 95 % interval of the change (paired bootstrap over phrases)
    high: float
    n_phrases: int
    n_chars: int
    result: str  # BETTER, WORSE or INCONCLUSIVE

    def to_json(self) -> Dict[str, Any]:
        return {
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()},
            "method": f"paired bootstrap over phrases, {RESAMPLES} resamples, {LEVEL:.0%} interval; "
            f"decisive from {MIN_DECISIVE_PHRASES} phrases",
        }


def char_errors(reference: str, hypothesis: str) -> int:
    """Edits (substitutions, deletions, insertions) after the normalisation CER uses."""
    from resonance.text import edit_distance, normalize_for_cer

    return edit_distance(normalize_for_cer(reference), normalize_for_cer(hypothesis))


def phrase_errors(
    references: Sequence[str], hyps_a: Sequence[str], hyps_b: Sequence[str]
) -> List[PhraseErrors]:
    """Recordings grouped by phrase (normalised reference), errors of both models summed per phrase."""
    from resonance.text import normalize_for_cer

    grouped: Dict[str, List[int]] = {}
    for reference, a, b in zip(references, hyps_a, hyps_b):
        key = normalize_for_cer(reference)
        if not key:
            continue  # nothing to count characters against
        sums = grouped.setdefault(key, [0, 0, 0])
        sums[0] += len(key)
        sums[1] += char_errors(reference, a)
        sums[2] += char_errors(reference, b)
    return [PhraseErrors(text, *sums) for text, sums in grouped.items()]


def compare(phrases: Sequence[PhraseErrors], seed: int = 0) -> Comparison:
    """Model B against model A over ``phrases``: the change in character accuracy, its interval, the verdict."""
    if not phrases:
        return Comparison(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, INCONCLUSIVE)
    chars = np.asarray([p.chars for p in phrases], dtype=np.float64)
    errors_a = np.asarray([p.errors_a for p in phrases], dtype=np.float64)
    errors_b = np.asarray([p.errors_b for p in phrases], dtype=np.float64)

    def accuracy(errors: np.ndarray, weights: np.ndarray) -> np.ndarray:
        # Accuracy stops at 0 (CER counts insertions, so a looping model passes 100 % errors).
        return np.maximum(0.0, 1.0 - (errors @ weights.T) / (chars @ weights.T))

    one = np.ones((1, len(phrases)))
    acc_a, acc_b = float(accuracy(errors_a, one)[0]), float(accuracy(errors_b, one)[0])
    rng = np.random.default_rng(seed)
    # Each resample as counts of how often each phrase was drawn: the sums become matrix products.
    draws = rng.integers(0, len(phrases), size=(RESAMPLES, len(phrases)))
    counts = np.zeros((RESAMPLES, len(phrases)))
    np.add.at(counts, (np.arange(RESAMPLES)[:, None], draws), 1.0)
    changes = accuracy(errors_b, counts) - accuracy(errors_a, counts)
    tail = (1 - LEVEL) / 2
    low, high = (float(v) for v in np.quantile(changes, [tail, 1 - tail]))
    result = INCONCLUSIVE
    if len(phrases) >= MIN_DECISIVE_PHRASES:
        if low > 0:
            result = BETTER
        elif high < 0:
            result = WORSE
    return Comparison(acc_a, acc_b, acc_b - acc_a, low, high, len(phrases), int(chars.sum()), result)
