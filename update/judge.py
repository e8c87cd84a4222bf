"""Is the candidate bundle at least as good as the served one on what the patient says now?

Both bundles transcribe the same held-out recordings with the runtime, as the device would. The candidate may
be deployed when it makes no more character errors than the served bundle (not worse: a tie deploys, since the
candidate learnt from more of the patient's speech). The paired bootstrap (train/significance.py) says how
sure that is; with a handful of held-out recordings it is usually "inconclusive", which is why the rule is
"not worse" and not "significantly better": the loop must be able to move on small steps, and
``resonance eval loop`` checks on a large fair test that it never deploys a worse model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from resonance.data.labels import Utterance
from resonance.train.significance import Comparison, char_errors, compare, phrase_errors

FIXED = "fixed"  # the served model got it wrong, the new one right
BROKEN = "broken"  # the served model got it right, the new one wrong
BETTER = "closer"  # both wrong, the new one with fewer character errors
WORSE = "further"  # both wrong, the new one with more
RIGHT = "right"  # both right
SAME = "same"  # both wrong, as many errors


@dataclass(frozen=True)
class Judgement:
    comparison: Comparison  # A = the served bundle, B = the candidate
    rows: List[Dict[str, Any]]  # per recording: audio, reference, current, new, errors of each, change
    deploy: bool  # the candidate makes no more character errors than the served bundle

    @property
    def fixed(self) -> List[str]:
        return [r["reference"] for r in self.rows if r["change"] == FIXED]

    @property
    def broken(self) -> List[str]:
        return [r["reference"] for r in self.rows if r["change"] == BROKEN]

    @property
    def still_right(self) -> int:
        return sum(r["change"] == RIGHT for r in self.rows)

    @property
    def still_wrong(self) -> int:
        return sum(r["change"] in (BETTER, WORSE, SAME) for r in self.rows)

    def to_json(self) -> Dict[str, Any]:
        return {
            "deploy": self.deploy,
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
    not_worse = sum(r["errors_new"] for r in rows) <= sum(r["errors_current"] for r in rows)
    return Judgement(comparison, rows, bool(rows) and not_worse)


def judge_bundles(
    served: Path, candidate: Path, recordings: Sequence[Utterance], threads: Optional[int] = None
) -> Judgement:
    """Transcribe ``recordings`` with both bundles (free text, the runtime) and judge."""
    from resonance.runtime.transcriber import Transcriber

    texts: List[List[str]] = []
    for bundle in (served, candidate):
        transcriber = Transcriber(bundle, threads=threads)
        texts.append([transcriber.transcribe(u.audio, mode="free").text for u in recordings])
    return judge_texts([u.text for u in recordings], texts[0], texts[1], [u.rel for u in recordings])
