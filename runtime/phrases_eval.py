"""`resonance eval phrases`: how well the phrase board works for one bundle, on labelled recordings.

Protocol (one seed):

1. The list is the bundle's phrases (or ``--phrases``). A random ``out_of_list_fraction`` of the listed phrases
   that have recordings is taken out of the list: their recordings are unknown requests and must be rejected
   ("none of these"). Recordings of phrases that were never in the list are reported on their own row.
2. Every recording is transcribed twice, as the server would: mode=free and mode=both (the reduced list, the
   runtime's shortlist); the scores of every scored candidate are kept, with the latency of both calls.
3. The calibration (temperature and the "none of these" score) is fitted on one random half of the recordings
   (listed and taken-out phrases) by maximum likelihood and the decisions are counted on the other half; then
   the halves swap. So every number comes from recordings the calibration did not see. A phrase is rejected
   when P("none of these") reaches ``max_none``; the report also shows other values of it.

Torch-free (runtime only): it runs on the device the bundle serves on.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from resonance.errors import ResonanceError
from resonance.runtime.phrases import PhraseOptions, clean_phrases, decide

SWEEP = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)  # values of max_none the report also shows
IN_LIST = "in_list"
REMOVED = "removed"
NEVER_LISTED = "never_listed"


# Weight of the prior on the calibration, in the units of one recording's log-likelihood: a Gaussian of unit
# variance on (1/temperature, none_score/temperature) centred on the runtime's defaults. Next to hundreds of
# scored recordings it is negligible, except where they cannot settle the fit: answers that the scores
# separate perfectly (a model scoring its own training recordings, as export's per-patient fit does) have no
# maximum-likelihood temperature, it runs to 0 and stops wherever the iterations end (0.015 on speaker A's
# 70-phrase loop bundle: P(none) became 0 or 1, and 4 of 56 never-heard phrases scoring just above the
# "none" score were accepted as a board phrase; README, "Does the loop work?").
CALIBRATION_PRIOR = 1.0


def fit_calibration(
    rows: Sequence[Tuple[np.ndarray, int]],
    start: Optional[Tuple[float, float]] = None,
    iterations: int = 50,
    prior: float = CALIBRATION_PRIOR,
) -> Tuple[float, float]:
    """(temperature, none_score) maximising the likelihood of the right answers, with a weak prior.

    ``rows``: (candidate scores, index of the right candidate, or len(scores) for "none of these"). The model
    is a softmax over ``a * score_i`` and ``b``; its negative log-likelihood is convex in (a, b), so damped
    Newton steps converge in a few iterations. temperature = 1/a, none_score = b/a. ``prior``: the weight of
    ``0.5 * |(a, b) - defaults|^2`` added to it (:data:`CALIBRATION_PRIOR`; 0 = plain maximum likelihood), which
    keeps the fit finite and near the defaults when the rows cannot place it.
    """
    rows = [(np.asarray(s, dtype=np.float64), y) for s, y in rows if len(s)]
    if not rows:
        raise ResonanceError("no recordings to calibrate on", "give --data more labelled recordings")
    defaults = PhraseOptions()
    centre = np.asarray([1.0, defaults.none_score], dtype=np.float64) / defaults.temperature
    theta = centre.copy() if start is None else np.asarray(start, dtype=np.float64)

    def objective(th: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
        offset = th - centre
        value, grad, hess = 0.5 * prior * float(offset @ offset), prior * offset, prior * np.eye(2)
        for scores, label in rows:
            x = np.zeros((len(scores) + 1, 2))
            x[:-1, 0] = scores
            x[-1, 1] = 1.0
            z = x @ th
            z -= z.max()
            p = np.exp(z)
            p /= p.sum()
            value -= math.log(max(p[label], 1e-300))
            mean = p @ x
            grad += mean - x[label]
            hess += (x * p[:, None]).T @ x - np.outer(mean, mean)
        return value, grad, hess

    value, grad, hess = objective(theta)
    for _ in range(iterations):
        step = np.linalg.solve(hess + 1e-6 * np.eye(2), grad)
        size = 1.0
        while size > 1e-4:
            trial = theta - size * step
            if trial[0] > 1e-3:
                trial_value, trial_grad, trial_hess = objective(trial)
                if trial_value <= value:
                    break
            size /= 2
        else:
            break
        converged = value - trial_value < 1e-9
        theta, value, grad, hess = trial, trial_value, trial_grad, trial_hess
        if converged:
            break
    return 1.0 / theta[0], theta[1] / theta[0]


def evaluate_phrases(
    bundle: Path,
    data: Path,
    phrases_file: Optional[Path] = None,
    out_of_list_fraction: float = 0.2,
    seed: int = 0,
    all_phrases: bool = False,
    threads: Optional[int] = None,
    progress: Optional[Callable[[str], Any]] = None,
) -> Dict[str, Any]:
    """Run the protocol above; returns the report (``format_report`` prints it)."""
    from resonance.data.labels import load_labels
    from resonance.runtime.transcriber import Transcriber
    from resonance.text import normalize_for_cer

    if not 0.0 <= out_of_list_fraction < 1.0:
        raise ResonanceError(
            f"--out-of-list-fraction {out_of_list_fraction} is not in [0, 1)", "use e.g. 0.2"
        )
    say = progress or (lambda line: None)
    utterances = load_labels(data)
    transcriber = Transcriber(bundle, threads=threads)
    if phrases_file is not None:
        from resonance.data.record import read_phrases

        listed = clean_phrases(read_phrases(phrases_file))
    else:
        listed = list(transcriber.board.texts)
    if not listed:
        raise ResonanceError(
            f"the bundle '{bundle}' has no phrase list",
            "pass --phrases FILE, or add phrases with `resonance phrases add --bundle ...`",
        )
    by_form = {normalize_for_cer(p): p for p in listed}
    recorded = sorted(
        {by_form[normalize_for_cer(u.text)] for u in utterances if normalize_for_cer(u.text) in by_form}
    )
    if not recorded:
        raise ResonanceError(
            f"none of the recordings in '{data}' says a phrase of the list",
            "evaluate on recordings of the listed phrases (e.g. a second take of the training phrases)",
        )
    rng = np.random.default_rng(seed)
    n_removed = round(out_of_list_fraction * len(recorded))
    removed = set(rng.choice(recorded, n_removed, replace=False).tolist()) if n_removed else set()
    kept = [p for p in listed if p not in removed]
    base = transcriber.phrase_options
    options = replace(
        base,
        top_k=len(kept),
        max_none=1.0,
        max_distance=None,
        max_rows=None if all_phrases else base.max_rows,
    )
    transcriber.transcribe(utterances[0].audio, mode="both", phrases=kept, phrase_options=options)  # warm-up

    rows: List[Dict[str, Any]] = []
    for n, utterance in enumerate(utterances, 1):
        form = normalize_for_cer(utterance.text)
        truth = by_form.get(form)
        category = IN_LIST if truth in kept else REMOVED if truth in removed else NEVER_LISTED
        free = transcriber.transcribe(utterance.audio, mode="free")
        both = transcriber.transcribe(utterance.audio, mode="both", phrases=kept, phrase_options=options)
        found = both.phrases
        candidates = [(c.text, c.score) for c in found.candidates] if found is not None else []
        rows.append(
            {
                "audio": utterance.rel,
                "text": utterance.text,
                "category": category,
                "free_text": free.text,
                "free_ms": free.timings.get("total_ms", 0.0),
                "both_ms": both.timings.get("total_ms", 0.0),
                "phrases_ms": both.timings.get("phrases_ms", 0.0),
                "scored": found.scored if found is not None else 0,
                "candidates": candidates,
                "truth": truth if category == IN_LIST else None,
            }
        )
        if n % 10 == 0 or n == len(utterances):
            say(f"  {n}/{len(utterances)} recordings")

    report = {
        "bundle": str(bundle),
        "data": str(data),
        "seed": seed,
        "phrases_listed": len(listed),
        "phrases_removed": sorted(removed),
        "shortlist_rows": options.max_rows,
    }
    report.update(cross_validate(rows, seed, base))
    return report


def cross_validate(rows: List[Dict[str, Any]], seed: int, base: PhraseOptions) -> Dict[str, Any]:
    """Step 3 on scored recordings: 2-fold calibration and decisions (written into ``rows``), metrics.

    Separate from the scoring so a saved report's rows can be counted again with other options.
    """
    order = np.random.default_rng([seed, 1]).permutation(len(rows))
    halves = [sorted(order[: len(rows) // 2].tolist()), sorted(order[len(rows) // 2 :].tolist())]
    folds = []
    for fold in range(2):
        fit_rows = [_training_pair(rows[i]) for i in halves[fold]]
        temperature, none_score = fit_calibration([r for r in fit_rows if r is not None])
        fitted = replace(base, temperature=temperature, none_score=none_score)
        for i in halves[1 - fold]:
            rows[i].update(_decision(rows[i], fitted))
        folds.append({"temperature": round(temperature, 4), "none_score": round(none_score, 4)})
    # The calibration a deployment would use: fitted on all the recordings.
    temperature, none_score = fit_calibration([r for r in map(_training_pair, rows) if r is not None])
    return {
        "max_none": base.max_none,
        "folds": folds,
        "calibration_all": {"temperature": round(temperature, 4), "none_score": round(none_score, 4)},
        "metrics": _metrics(rows),
        "rows": rows,
    }


def _training_pair(row: Dict[str, Any]) -> Optional[Tuple[np.ndarray, int]]:
    """(scores, right answer) of one recording for the fit; None when it cannot teach the calibration.

    Recordings of phrases never in the list are left out of the fit: their share depends on how the list
    was made, and would set the prior of "none of these" (the fit is a likelihood); the removed phrases set
    it to the simulated ``out_of_list_fraction``.
    """
    texts = [text for text, _ in row["candidates"]]
    scores = np.asarray([score for _, score in row["candidates"]], dtype=np.float64)
    if not texts or row["category"] == NEVER_LISTED:
        return None
    if row["category"] == IN_LIST:
        if row["truth"] not in texts:
            return None  # the shortlist missed it: no right answer among the candidates to learn from
        return scores, texts.index(row["truth"])
    return scores, len(texts)


def _decision(row: Dict[str, Any], options: PhraseOptions) -> Dict[str, Any]:
    if not row["candidates"]:
        return {"best": None, "rejected": True, "confidence": 0.0, "none": 1.0, "top3": [], "unlike": True}
    texts = [text for text, _ in row["candidates"]]
    scores = np.asarray([s for _, s in row["candidates"]])
    found = decide(texts, scores, options, len(texts), row["free_text"])
    limit = options.max_distance
    return {
        "best": found.candidates[0].text,
        "rejected": found.rejected,
        "confidence": round(found.confidence, 4),
        "none": round(found.none_confidence, 4),
        "top3": [c.text for c in found.candidates[:3]],
        # the free transcription vetoed the best phrase (PhraseOptions.max_distance), whatever P(none)
        "unlike": limit is not None and found.distance is not None and found.distance > limit,
    }


def _metrics(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    def rate(hits: int, total: int) -> Optional[float]:
        return round(hits / total, 4) if total else None

    inl = [r for r in rows if r["category"] == IN_LIST]
    out = {c: [r for r in rows if r["category"] == c] for c in (REMOVED, NEVER_LISTED)}
    right = [r for r in inl if r["best"] == r["truth"]]
    return {
        "n_in_list": len(inl),
        "n_removed": len(out[REMOVED]),
        "n_never_listed": len(out[NEVER_LISTED]),
        "top1_in_list": rate(len(right), len(inl)),
        "top3_in_list": rate(sum(r["truth"] in r["top3"] for r in inl), len(inl)),
        "shortlist_recall": rate(sum(r["truth"] in [t for t, _ in r["candidates"]] for r in inl), len(inl)),
        "top1_with_rejection": rate(sum(not r["rejected"] for r in right), len(inl)),
        "wrong_accepted_in_list": rate(
            sum(r["best"] != r["truth"] and not r["rejected"] for r in inl), len(inl)
        ),
        "rejected_removed": rate(sum(r["rejected"] for r in out[REMOVED]), len(out[REMOVED])),
        "rejected_never_listed": rate(sum(r["rejected"] for r in out[NEVER_LISTED]), len(out[NEVER_LISTED])),
        "free_exact_in_list": rate(sum(r["free_text"] == r["truth"] for r in inl), len(inl)),
        "threshold_sweep": [_at_threshold(inl, out, t) for t in SWEEP],
        "mean_free_ms": round(float(np.mean([r["free_ms"] for r in rows])), 1),
        "mean_both_ms": round(float(np.mean([r["both_ms"] for r in rows])), 1),
        "mean_phrases_ms": round(float(np.mean([r["phrases_ms"] for r in rows])), 1),
        "mean_scored": round(float(np.mean([r["scored"] for r in rows])), 1),
    }


def _at_threshold(inl: Sequence[Dict[str, Any]], out: Dict[str, List], threshold: float) -> Dict[str, Any]:
    """The decisions had ``max_none`` been ``threshold`` (same fitted calibrations)."""

    def rate(hits: int, total: int) -> Optional[float]:
        return round(hits / total, 4) if total else None

    def kept(r: Dict[str, Any]) -> bool:
        return r["best"] is not None and r["none"] < threshold and not r.get("unlike", False)

    return {
        "threshold": threshold,
        "top1_with_rejection": rate(sum(r["best"] == r["truth"] and kept(r) for r in inl), len(inl)),
        "rejected_removed": rate(sum(not kept(r) for r in out[REMOVED]), len(out[REMOVED])),
        "rejected_never_listed": rate(sum(not kept(r) for r in out[NEVER_LISTED]), len(out[NEVER_LISTED])),
    }


def format_report(report: Dict[str, Any]) -> str:
    m = report["metrics"]

    def pct(value: Optional[float]) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    ratio = m["mean_both_ms"] / m["mean_free_ms"] if m["mean_free_ms"] else float("nan")
    removed = len(report["phrases_removed"])
    lines = [
        f"phrase board: {report['bundle']} on {report['data']} (seed {report['seed']})",
        f"  list: {report['phrases_listed']} phrases, {removed} taken out as unknown requests; "
        f"shortlist {report['shortlist_rows'] or 'off (every phrase scored)'}"
        + (" decoder positions" if report["shortlist_rows"] else ""),
        "  calibration fitted on one half, counted on the other (2 folds): "
        + "; ".join(f"T={f['temperature']:.3f} none={f['none_score']:.2f}" for f in report["folds"])
        + f"; reject at P(none) >= {report['max_none']:.2f}",
        "",
        f"  {'metric':44s} {'value':>9s}  n",
        f"  {'top-1 in-list (no rejection)':44s} {pct(m['top1_in_list']):>9s}  {m['n_in_list']}",
        f"  {'top-3 in-list':44s} {pct(m['top3_in_list']):>9s}  {m['n_in_list']}",
        f"  {'top-1 in-list with rejection (right, kept)':44s} {pct(m['top1_with_rejection']):>9s}  "
        f"{m['n_in_list']}",
        f"  {'in-list accepted but wrong':44s} {pct(m['wrong_accepted_in_list']):>9s}  {m['n_in_list']}",
        f"  {'out-of-list rejected (taken out of the list)':44s} {pct(m['rejected_removed']):>9s}  "
        f"{m['n_removed']}",
        f"  {'out-of-list rejected (never in the list)':44s} {pct(m['rejected_never_listed']):>9s}  "
        f"{m['n_never_listed']}",
        f"  {'free transcription exactly right (in-list)':44s} {pct(m['free_exact_in_list']):>9s}  "
        f"{m['n_in_list']}",
        f"  {'shortlist recall (right phrase scored)':44s} {pct(m['shortlist_recall']):>9s}  {m['n_in_list']}",
        f"  {'mean latency mode=free':44s} {m['mean_free_ms']:>6.0f} ms",
        f"  {'mean latency mode=both':44s} {m['mean_both_ms']:>6.0f} ms  ({ratio:.2f}x free; "
        f"phrases {m['mean_phrases_ms']:.0f} ms, {m['mean_scored']:.0f} phrases scored)",
        "",
        "  other max_none: top-1 with rejection / out-of-list rejected (taken out of the list; never listed)",
        *(
            f"    {t['threshold']:.2f}: {pct(t['top1_with_rejection']):>7s} / {pct(t['rejected_removed']):>7s}; "
            f"{pct(t['rejected_never_listed'])}"
            for t in m["threshold_sweep"]
        ),
        "",
        "  calibration for this bundle (all recordings): "
        f"temperature={report['calibration_all']['temperature']}, "
        f"none_score={report['calibration_all']['none_score']}",
    ]
    return "\n".join(lines)
