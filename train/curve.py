"""`resonance eval curve`: how accuracy grows with the number of recordings (the guide's 30/50/100 table).

For each size N (and each seed): train on the first N utterances of TRAIN, evaluate generic and personalised
models on EVAL, and split EVAL into phrases seen in training and phrases never heard from this speaker. With
several seeds (which also change the held-out validation phrases, hence the seen/unseen split) each size's
row is the mean ± standard deviation over the seeds.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path

from resonance.errors import ResonanceError
from resonance.fsutil import (
    atomic_file,
    refuse_overlap,
    refuse_to_overwrite,
    write_json_atomic,
    write_text_atomic,
)
from resonance.progress import Stages
from resonance.text import normalize_for_cer
from resonance.train.config import TrainConfig

CURVE_FILE = "curve.json"  # one row per (size, seed); also what marks a folder as a learning curve's
GROUPS = ("seen", "unseen")
MODELS = ("generic", "personal")
METRICS = ("char_acc", "exact")


def learning_curve(
    base: TrainConfig,
    sizes: list[int],
    out: Path,
    seeds: int = 1,
    generic_cache: dict | None = None,
    done: list[dict] | None = None,
) -> list[dict]:
    """One row per (size, seed) in curve.json; curve.md and curve.png show the mean per size.

    Seeds are ``base.seed``, ``base.seed + 1`` …. ``generic_cache``: the caller's, to share the generic model's
    transcripts of EVAL between curves (they do not depend on the recipe). ``done``: rows of an interrupted
    curve with the same options, kept instead of training their (size, seed) again.
    """
    from resonance.train.trainer import train, training_inputs

    refuse_sizes_above_the_data(sizes, base.data)
    # The folder holds the curve's own adapters, each replaced by the next curve: never the data, and never a
    # folder of something else (curve.json, written first, marks it as a curve's).
    refuse_overlap(out, "learning-curve folder", training_inputs(base))
    refuse_to_overwrite(out, True, "learning-curve folder", own=(CURVE_FILE,))
    if not (out / CURVE_FILE).is_file():
        write_json_atomic(out / CURVE_FILE, [])
    rows, generic_cache = [], {} if generic_cache is None else generic_cache
    finished = {(r["size"], r.get("seed", base.seed)): r for r in done or []}
    runs = [(size, seed) for size in sizes for seed in range(base.seed, base.seed + seeds)]
    stages = Stages("eval curve", sum(run not in finished for run in runs))  # each training shows its own bar
    for size in sizes:
        for seed in range(base.seed, base.seed + seeds):
            if (size, seed) in finished:
                rows.append(finished[(size, seed)])
                continue
            stages.start(f"training on {size} recordings" + (f" (seed {seed})" if seeds > 1 else ""))
            name = f"adapter-{size}" if seeds == 1 else f"adapter-{size}-seed{seed}"
            config = dataclasses.replace(
                base, max_train_samples=size, seed=seed, out=str(out / name), force=True
            )
            load_before, started = os.getloadavg()[0], time.perf_counter()
            report = train(config, generic_cache)
            rows.append(
                {
                    "size": size,
                    "seed": seed,
                    "seconds": round(time.perf_counter() - started, 1),
                    # The machine's 1-minute load around the run: timings on a shared machine need it.
                    "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    **summarise(report),
                }
            )
            write_json_atomic(out / CURVE_FILE, rows)  # after every run: an interrupted curve keeps its rows
    write_text_atomic(out / "curve.md", render_markdown(rows))
    plot(aggregate(rows), out / "curve.png")
    stages.done(f"{out / 'curve.md'}")
    return rows


def refuse_sizes_above_the_data(sizes: list[int], data: str) -> None:
    """Refuse a size the data cannot fill, before any training: a run "on 100 recordings" that trained on all
    26 would put a row in the table that claims what was never measured."""
    from resonance.data.labels import load_labels
    from resonance.train.report import counted

    available = len(load_labels(data))
    too_big = [size for size in sizes if size > available]
    if too_big:
        raise ResonanceError(
            f"--sizes {','.join(map(str, too_big))}: the data has only {counted(available, 'recording')}",
            f"use sizes up to {available}, or record more",
        )


def summarise(report: dict) -> dict:
    """Char accuracy (1 - CER) and exact-phrase accuracy, generic vs personalised, seen vs unseen phrases."""
    from resonance.train.evaluate import cer

    seen_texts = set(report["train_texts"])
    result = {
        "train_seconds": report["train_seconds"],
        "samples_per_second": report["samples_per_second"],
        "cer_before": report["cer_before"],
        "cer_after": report["cer_after"],
    }
    for group, keep in (("seen", lambda t: t in seen_texts), ("unseen", lambda t: t not in seen_texts)):
        rows = [u for u in report["utterances"] if keep(u["reference"])]
        result[f"n_{group}"] = len(rows)
        for model, key in (("generic", "before"), ("personal", "hypothesis")):
            refs, hyps = [u["reference"] for u in rows], [u[key] for u in rows]
            result[f"{model}_{group}_char_acc"] = 1 - cer(refs, hyps) if rows else None
            exact = sum(normalize_for_cer(r) == normalize_for_cer(h) for r, h in zip(refs, hyps))
            result[f"{model}_{group}_exact"] = exact / len(rows) if rows else None
    return result


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per size: each number's mean and standard deviation over the seeds (sd None for one seed),
    and whether the personal model was worse than the generic one (overall CER) on any seed."""
    keys = [f"{m}_{g}_{x}" for g in GROUPS for m in MODELS for x in METRICS]
    keys += [f"n_{g}" for g in GROUPS] + ["train_seconds", "cer_before", "cer_after"]
    result = []
    for size in dict.fromkeys(r["size"] for r in rows):
        runs = [r for r in rows if r["size"] == size]
        summary: dict = {"size": size, "seeds": [r.get("seed") for r in runs]}
        for key in keys:
            values = [r[key] for r in runs if r.get(key) is not None]
            summary[key] = statistics.fmean(values) if values else None
            summary[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        summary["worse_than_generic"] = sum(worse_than_generic(r) for r in runs)
        result.append(summary)
    return result


def worse_than_generic(row: dict) -> bool:
    """Whether a run's personal model lost to the generic one: overall CER, or char accuracy on either group."""
    if row.get("cer_after") is not None and row["cer_after"] > row["cer_before"]:
        return True
    return any(
        row.get(f"personal_{g}_char_acc") is not None
        and row[f"personal_{g}_char_acc"] < row[f"generic_{g}_char_acc"]
        for g in GROUPS
    )


def _pct(summary: dict, key: str) -> str:
    value, sd = summary[key], summary.get(f"{key}_sd")
    if value is None:
        return "–"
    return f"{100 * value:.0f} %" if sd is None else f"{100 * value:.0f} ± {100 * sd:.0f} %"


def _count(summary: dict, key: str) -> str:
    value = summary[key]
    return "–" if value is None else f"{value:.0f}"


def render_markdown(rows: list[dict]) -> str:
    """The table of ``rows`` (one per run), one line per size: mean ± sd when a size has several seeds."""
    summaries = aggregate(rows)
    several = any(len(s["seeds"]) > 1 for s in summaries)
    head = (
        "| recordings | seen: generic → personal (char) | seen exact | unseen: generic → personal (char) "
        "| unseen exact | train time |"
        + (" seeds (worse than generic) |" if several else "")
        + "\n|---|---|---|---|---|---|"
        + ("---|" if several else "")
        + "\n"
    )
    lines = []
    for s in summaries:
        seconds = f"{s['train_seconds']:.0f} s" + (
            f" ± {s['train_seconds_sd']:.0f}" if s["train_seconds_sd"] is not None else ""
        )
        line = (
            f"| {s['size']} | {_pct(s, 'generic_seen_char_acc')} → **{_pct(s, 'personal_seen_char_acc')}** "
            f"({_count(s, 'n_seen')}) | {_pct(s, 'generic_seen_exact')} → {_pct(s, 'personal_seen_exact')} "
            f"| {_pct(s, 'generic_unseen_char_acc')} → **{_pct(s, 'personal_unseen_char_acc')}** "
            f"({_count(s, 'n_unseen')}) | {_pct(s, 'generic_unseen_exact')} → {_pct(s, 'personal_unseen_exact')} "
            f"| {seconds} |"
        )
        if several:
            line += f" {len(s['seeds'])} ({s['worse_than_generic']}) |"
        lines.append(line)
    return head + "\n".join(lines) + "\n"


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s["size"] for s in summaries]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style, label in (
        ("personal_seen_char_acc", "o-", "personal, seen phrases"),
        ("personal_unseen_char_acc", "s-", "personal, unseen phrases"),
        ("generic_seen_char_acc", "o--", "generic, seen phrases"),
        ("generic_unseen_char_acc", "s--", "generic, unseen phrases"),
    ):
        values = [s[key] for s in summaries]
        if all(v is not None for v in values):
            errors = [100 * (s[f"{key}_sd"] or 0.0) for s in summaries]
            ax.errorbar(sizes, [100 * v for v in values], yerr=errors, fmt=style, label=label, capsize=3)
    ax.set_xlabel("training recordings")
    ax.set_ylabel("character accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
