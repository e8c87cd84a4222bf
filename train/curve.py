"""`resonance eval curve`: how accuracy grows with the number of recordings (the guide's 30/50/100 table).

For each size N: train on the first N utterances of TRAIN, evaluate generic and personalised models on EVAL,
and split EVAL into phrases seen in training and phrases never heard from this speaker.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from resonance.fsutil import write_json_atomic, write_text_atomic
from resonance.text import normalize_for_cer
from resonance.train.config import TrainConfig


def learning_curve(base: TrainConfig, sizes: list[int], out: Path) -> list[dict]:
    from resonance.train.trainer import train

    rows, generic_cache = [], {}
    for size in sizes:
        config = dataclasses.replace(
            base, max_train_samples=size, out=str(out / f"adapter-{size}"), force=True
        )
        started = time.perf_counter()
        report = train(config, generic_cache)
        rows.append({"size": size, "seconds": round(time.perf_counter() - started, 1), **summarise(report)})
        write_json_atomic(out / "curve.json", rows)  # after every size: an interrupted curve keeps its rows
    write_text_atomic(out / "curve.md", render_markdown(rows))
    plot(rows, out / "curve.png")
    return rows


def summarise(report: dict) -> dict:
    """Char accuracy (1 - CER) and exact-phrase accuracy, generic vs personalised, seen vs unseen phrases."""
    from resonance.train.evaluate import cer

    seen_texts = set(report["train_texts"])
    result = {"train_seconds": report["train_seconds"], "samples_per_second": report["samples_per_second"]}
    for group, keep in (("seen", lambda t: t in seen_texts), ("unseen", lambda t: t not in seen_texts)):
        rows = [u for u in report["utterances"] if keep(u["reference"])]
        result[f"n_{group}"] = len(rows)
        for model, key in (("generic", "before"), ("personal", "hypothesis")):
            refs, hyps = [u["reference"] for u in rows], [u[key] for u in rows]
            result[f"{model}_{group}_char_acc"] = 1 - cer(refs, hyps) if rows else None
            exact = sum(normalize_for_cer(r) == normalize_for_cer(h) for r, h in zip(refs, hyps))
            result[f"{model}_{group}_exact"] = exact / len(rows) if rows else None
    return result


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def render_markdown(rows: list[dict]) -> str:
    head = (
        "| recordings | seen: generic → personal (char) | seen exact | unseen: generic → personal (char) "
        "| unseen exact | train time |\n|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['size']} | {_pct(r['generic_seen_char_acc'])} → **{_pct(r['personal_seen_char_acc'])}** "
        f"({r['n_seen']}) | {_pct(r['generic_seen_exact'])} → {_pct(r['personal_seen_exact'])} "
        f"| {_pct(r['generic_unseen_char_acc'])} → **{_pct(r['personal_unseen_char_acc'])}** ({r['n_unseen']}) "
        f"| {_pct(r['generic_unseen_exact'])} → {_pct(r['personal_unseen_exact'])} | {r['train_seconds']:.0f} s |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style, label in (
        ("personal_seen_char_acc", "o-", "personal, seen phrases"),
        ("personal_unseen_char_acc", "s-", "personal, unseen phrases"),
        ("generic_seen_char_acc", "o--", "generic, seen phrases"),
        ("generic_unseen_char_acc", "s--", "generic, unseen phrases"),
    ):
        values = [r[key] for r in rows]
        if all(v is not None for v in values):
            ax.plot(sizes, [100 * v for v in values], style, label=label)
    ax.set_xlabel("training recordings")
    ax.set_ylabel("character accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
