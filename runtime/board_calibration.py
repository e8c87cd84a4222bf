"""Fit the phrase board's rejection to one patient: k-fold over phrases on the patient's own recordings.

`resonance export` runs this on the bundle it made, with the recordings the adapter learnt from (and its
eval data, and `resonance update`'s held-out recordings): every recording is transcribed once and scored
against every phrase on the board. The phrases are then split into k folds; for each fold, the board without
that fold's phrases is the list, so the recordings of the fold's phrases are requests "not on the board" (the
right answer is "none of these") and the others are requests on it. The temperature and the "none of these"
score (runtime/phrases.py PhraseOptions) are fitted to those answers by maximum likelihood
(phrases_eval.fit_calibration), and the fitted options are counted on the same folds (their rates are
reported with the calibration: a trained model is surer of its own training recordings than of new ones, so
they are optimistic; `resonance eval phrases` and `resonance eval loop` measure on recordings it never heard).

Torch-free: it runs the bundle with the runtime, as the device does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from resonance.data.labels import Utterance
from resonance.runtime.phrases import PhraseOptions, decide

FOLDS = 5
MIN_PHRASES = 4  # fewer phrases on the board: nothing to leave out and still have a board; defaults kept


@dataclass(frozen=True)
class Heard:
    """One recording scored against the whole board."""

    text: str  # what was said
    free_text: str  # the free transcription
    scores: Dict[str, float]  # every board phrase's score


def hear(transcriber: Any, utterances: Sequence[Utterance], board: Sequence[str]) -> List[Heard]:
    """Transcribe each recording and score every board phrase (no shortlist: the folds need all scores)."""
    options = replace(
        transcriber.phrase_options, top_k=len(board), max_none=1.0, max_rows=None, max_distance=None
    )
    heard = []
    for utterance in utterances:
        result = transcriber.transcribe(
            utterance.audio, mode="both", phrases=list(board), phrase_options=options
        )
        found = result.phrases
        scores = {c.text: c.score for c in found.candidates} if found is not None else {}
        heard.append(Heard(utterance.text, result.text, scores))
    return heard


def fold_examples(
    heard: Sequence[Heard], board: Sequence[str], folds: int = FOLDS, seed: int = 0
) -> List[Tuple[List[str], np.ndarray, int, str]]:
    """(the fold's list, scores on it, index of the right phrase or len(list) for "none of these", free text)
    for every recording of a board phrase, once per fold."""
    on_board = [h for h in heard if h.text in board and len(h.scores) == len(board)]
    order = list(np.random.default_rng(seed).permutation(len(board)))
    examples = []
    for fold in range(folds):
        left_out = {board[i] for i in order[fold::folds]}
        kept = [p for p in board if p not in left_out]
        for h in on_board:
            scores = np.asarray([h.scores[p] for p in kept], dtype=np.float64)
            label = kept.index(h.text) if h.text in kept else len(kept)
            examples.append((kept, scores, label, h.free_text))
    return examples


def calibrate_board(
    bundle: Path,
    utterances: Sequence[Utterance],
    threads: Optional[int] = None,
    folds: int = FOLDS,
    seed: int = 0,
) -> Dict[str, Any]:
    """The manifest's ``phrase_calibration`` for ``bundle`` fitted on ``utterances``; {} when the board or the
    recordings are too few to fit (the runtime's defaults then apply)."""
    from resonance.runtime.phrases_eval import fit_calibration
    from resonance.runtime.transcriber import Transcriber

    transcriber = Transcriber(bundle, threads=threads, verify=False)
    board = list(transcriber.board.texts)
    recorded = [u for u in utterances if u.text in set(board)]
    if len(board) < MIN_PHRASES or len({u.text for u in recorded}) < MIN_PHRASES:
        return {}
    examples = fold_examples(hear(transcriber, recorded, board), board, min(folds, len(board)), seed)
    temperature, none_score = fit_calibration([(scores, label) for _, scores, label, _ in examples])
    fitted = replace(transcriber.phrase_options, temperature=temperature, none_score=none_score)
    counts = _count(examples, fitted)
    return {
        "temperature": round(temperature, 4),
        "none_score": round(none_score, 4),
        "fitted_on": {
            "recordings": len(recorded),
            "phrases": len({u.text for u in recorded}),
            "folds": min(folds, len(board)),
            # The fitted options counted on the same folds (optimistic: see the module's docstring).
            **counts,
        },
    }


def _count(examples, options: PhraseOptions) -> Dict[str, float]:
    on = [(kept, s, y, free) for kept, s, y, free in examples if y < len(kept)]
    off = [(kept, s, y, free) for kept, s, y, free in examples if y == len(kept)]

    def accepted(kept, scores, free) -> Optional[str]:
        return decide(kept, scores, options, len(kept), free).best

    right = sum(accepted(k, s, f) == k[y] for k, s, y, f in on)
    wrong_off = sum(accepted(k, s, f) is not None for k, s, _, f in off)
    return {
        "on_board_accepted_right": round(right / len(on), 4) if on else None,
        "off_board_accepted": round(wrong_off / len(off), 4) if off else None,
    }
