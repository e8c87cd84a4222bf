"""Is the candidate bundle worse than the served one on what the patient says now?

Both bundles transcribe the same held-out recordings with the runtime, as the device would. A handful of them
(4-7) cannot show that a model is better, and one slipped character on one of them moves the accuracy by 5-10
points, so the rule is the one `train`'s verdict follows: only evidence of a loss keeps the candidate out. It
is deployed when it makes no more character errors than the served bundle, and otherwise unless

* the paired bootstrap (train/significance.py) says it is significantly worse, or
* it is worse than the served bundle on at least :data:`NET_LOSSES_THAT_BLOCK` more held-out recordings than
  it is better on (broken or further, against fixed or closer): one recording is a slip, two are a pattern.

Otherwise (a tie, a gain, or a lone slip) the candidate, which learnt from more of the patient's speech, is
served: on speaker A's loop every candidate trained this way was ahead on a large fair test (+3.6 to +10.7
points), while "no more character errors" on 5 recordings held back one that was 9 points better (README,
"Does the loop work?"). ``resonance eval loop`` keeps checking, on recordings no model trained on, that the
served model is never replaced by a worse one, and ``resonance rollback`` undoes a swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from resonance.data.labels import Utterance
from resonance.runtime.decoding import DecodingOptions
from resonance.train.significance import WORSE as SIGNIFICANTLY_WORSE
from resonance.train.significance import Comparison, char_errors, compare, phrase_errors

FIXED = "fixed"  # the served model got it wrong, the new one right
BROKEN = "broken"  # the served model got it right, the new one wrong
BETTER = "closer"  # both wrong, the new one with fewer character errors
WORSE = "further"  # both wrong, the new one with more
RIGHT = "right"  # both right
SAME = "same"  # both wrong, as many errors
# Each change in words, in the order the summary counts them (update.txt explains them from here).
CHANGES = {
    FIXED: "wrong before, right now",
    BROKEN: "right before, wrong now",
    BETTER: "wrong both times, fewer character errors now",
    WORSE: "wrong both times, more character errors now",
    RIGHT: "right both times",
    SAME: "wrong both times, as many character errors",
}
GAINS = (FIXED, BETTER)
LOSSES = (BROKEN, WORSE)
NET_LOSSES_THAT_BLOCK = 2  # worse on this many more held-out recordings than better: not a slip


@dataclass(frozen=True)
class Judgement:
    comparison: Comparison  # A = the served bundle, B = the candidate
    rows: List[Dict[str, Any]]  # per recording: audio, reference, current, new, errors of each, change
    deploy: bool  # no evidence that the candidate is worse (the module's rule)
    reason: str  # why, in words a caregiver can read

    @property
    def fixed(self) -> List[str]:
        return [r["reference"] for r in self.rows if r["change"] == FIXED]

    @property
    def broken(self) -> List[str]:
        return [r["reference"] for r in self.rows if r["change"] == BROKEN]

    def counts(self) -> Dict[str, int]:
        """How many held-out recordings each change of :data:`CHANGES` has, in its order."""
        return {change: sum(r["change"] == change for r in self.rows) for change in CHANGES}

    def to_json(self) -> Dict[str, Any]:
        return {
            "deploy": self.deploy,
            "reason": self.reason,
            "comparison": self.comparison.to_json(),
            "fixed": self.fixed,
            "broken": self.broken,
            "rows": self.rows,
        }


def judge_texts(
    references: Sequence[str],
    current: Sequence[str],
    new: Sequence[str],
    audio: Sequence[str] = (),
    seed: int = 0,
) -> Judgement:
    """The judgement from the two models' transcripts of the same recordings."""
    from resonance.text import normalize_for_cer

    rows = []
    for i, (reference, a, b) in enumerate(zip(references, current, new)):
        errors_a, errors_b = char_errors(reference, a), char_errors(reference, b)
        right_a = normalize_for_cer(a) == normalize_for_cer(reference)
        right_b = normalize_for_cer(b) == normalize_for_cer(reference)
        if right_a and right_b:
            change = RIGHT
        elif right_b:
            change = FIXED
        elif right_a:
            change = BROKEN
        else:
            change = BETTER if errors_b < errors_a else WORSE if errors_b > errors_a else SAME
        rows.append(
            {
                "audio": audio[i] if i < len(audio) else "",
                "reference": reference,
                "current": a,
                "new": b,
                "errors_current": errors_a,
                "errors_new": errors_b,
                "change": change,
            }
        )
    comparison = compare(phrase_errors(references, current, new), seed=seed)
    deploy, reason = decide(comparison, rows)
    return Judgement(comparison, rows, deploy, reason)


def decide(comparison: Comparison, rows: Sequence[Dict[str, Any]]) -> Tuple[bool, str]:
    """(deploy?, why): the module's rule on the held-out recordings."""
    if not rows:
        return False, "no held-out recordings to judge on"
    gains = sum(r["change"] in GAINS for r in rows)
    losses = sum(r["change"] in LOSSES for r in rows)
    errors_new = sum(r["errors_new"] for r in rows)
    errors_current = sum(r["errors_current"] for r in rows)
    tally = f"better on {gains}, worse on {losses} of {len(rows)} held-out recordings"
    if errors_new <= errors_current:
        return True, f"no more character errors than the served model ({tally})"
    if comparison.result == SIGNIFICANTLY_WORSE:
        return False, f"significantly worse on the held-out recordings ({tally})"
    if losses - gains >= NET_LOSSES_THAT_BLOCK:
        return False, f"worse on {losses - gains} more held-out recordings than it is better on ({tally})"
    return True, f"more character errors, but on one recording more at most: a slip, not evidence ({tally})"


def judge_bundles(
    served: Path,
    candidate: Path,
    recordings: Sequence[Utterance],
    threads: Optional[int] = None,
    decoding: Optional[DecodingOptions] = None,
) -> Judgement:
    """Transcribe ``recordings`` with both bundles (free text, the runtime, decoding as ``decoding`` says:
    the device's beams; None = the runtime's default) and judge."""
    from resonance.runtime.transcriber import Transcriber

    texts: List[List[str]] = []
    for bundle in (served, candidate):
        transcriber = Transcriber(bundle, threads=threads, options=decoding)
        texts.append([transcriber.transcribe(u.audio, mode="free").text for u in recordings])
    return judge_texts([u.text for u in recordings], texts[0], texts[1], [u.rel for u in recordings])
