"""report.png: the training report as a picture a family can read.

Top to bottom: the verdict in words (zh, en); two bars (how much the generic and the personal model got
right); a row per test phrase with what each model heard, right or wrong; last, for the technician, the
validation curve (when there was a validation set) and the training loss.

Chinese text needs a CJK font. ``find_cjk_font`` looks for a common one; without any, the picture stays
readable instead of drawing boxes ("tofu"): English headings, and phrases numbered as in report.txt.
"""

from __future__ import annotations

import contextlib
import logging
import re
import textwrap
from pathlib import Path

from resonance.fsutil import atomic_file

# Families tried in order: Linux (Noto / Source Han / WenQuanYi, e.g. Debian's fonts-wqy-zenhei), macOS
# (PingFang, Hiragino, Heiti), Windows (Microsoft YaHei, SimHei), Android's fallback.
CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "PingFang SC",
    "Hiragino Sans GB",
    "Heiti SC",
    "Microsoft YaHei",
    "SimHei",
    "Droid Sans Fallback",
    "Noto Sans CJK JP",
)
RIGHT, WRONG = "✓", "✗"  # exactly right / any mistake, in report.txt too
LATIN_FONT = "DejaVu Sans"  # ships with matplotlib; also has the ✓ and ✗ marks the CJK fonts may lack
MAX_PHRASE_ROWS = 40  # more would make the picture too tall to read; report.txt lists every recording
MAX_CELL_CHARS = 16  # a looping generic model can "hear" a paragraph: cut it in the picture
GREEN, RED, GREY, AMBER = "#2e7d32", "#c62828", "#9e9e9e", "#b26a00"
_CJK = re.compile("[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]")


def find_cjk_font(candidates: tuple[str, ...] = CJK_FONTS) -> str | None:
    """The first of ``candidates`` that matplotlib can use, or None."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return next((name for name in candidates if name in installed), None)


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def plot(report: dict, rows: list[dict], path: Path) -> None:
    """Write report.png (atomically: a half-written picture never replaces a good one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with _quiet_font_warnings():
        fig = report_figure(report, rows, find_cjk_font())
        try:
            with atomic_file(path) as tmp:  # fsutil's temporary name: a killed run's is cleaned next time
                fig.savefig(tmp, dpi=100, format="png")
        finally:
            plt.close(fig)


@contextlib.contextmanager
def _quiet_font_warnings():
    """WenQuanYi has one weight (500): matplotlib logs "Failed to find font weight normal" for every text."""
    font_log = logging.getLogger("matplotlib.font_manager")
    level = font_log.level
    font_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        font_log.setLevel(level)


def report_figure(report: dict, rows: list[dict], cjk_font: str | None):
    """The figure; ``rows``: report.phrase_rows. Its axes are labelled "header", "scores", "phrases" and
    "progress" (what tests look for)."""
    import matplotlib.pyplot as plt

    shown = rows[:MAX_PHRASE_ROWS]
    heights = [1.1, 1.9, 0.9 + 0.34 * max(len(shown), 1), 2.6]
    # Latin first: matplotlib falls back glyph by glyph, so the CJK font draws only what DejaVu lacks.
    families = [LATIN_FONT, cjk_font] if cjk_font else [LATIN_FONT]
    with plt.rc_context({"font.family": families}):
        fig, (header, bars, table, progress) = plt.subplots(
            4, 1, figsize=(11, sum(heights)), gridspec_kw={"height_ratios": heights}
        )
        words = _Words(cjk_font is not None)
        _draw_header(header, report, words)
        _draw_scores(bars, report, words)
        _draw_phrases(table, rows, shown, words)
        _draw_progress(progress, report, words)
        fig.tight_layout()
    return fig


class _Words:
    """Labels in both languages where Chinese can be drawn, in English alone where it cannot."""

    def __init__(self, chinese: bool) -> None:
        self.chinese = chinese

    def __call__(self, zh: str, en: str, sep: str = " / ") -> str:
        return f"{zh}{sep}{en}" if self.chinese else en

    def text(self, text: str, number: int, prefix: str) -> str:
        """A phrase as drawn: itself, or its number in report.txt when its characters cannot be drawn."""
        if not self.chinese and has_cjk(text):
            return f"{prefix} {number}" if prefix else ""
        return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _draw_header(ax, report: dict, words: _Words) -> None:
    ax.set_label("header")
    ax.axis("off")
    # better beyond luck: green; worse beyond luck: red; too few test phrases to tell: amber
    colour = {"better": GREEN, "worse": RED}.get(report.get("verdict_result", ""), AMBER)
    if "verdict_result" not in report:  # a report from before the significance test
        colour = GREEN if report["verdict_better"] else RED
    if not words.chinese:
        ax.text(0, 1, "\n".join(textwrap.wrap(report["verdict"], 80)), va="top", fontsize=14, color=colour)
        return
    first = ax.text(
        0, 1, "\n".join(textwrap.wrap(report["verdict_zh"], 42)), va="top", fontsize=15, color=colour
    )
    ax.annotate(  # the English line just under the Chinese one, however many lines that wrapped to
        "\n".join(textwrap.wrap(report["verdict"], 120)),
        xy=(0, 0),
        xycoords=first,
        xytext=(0, -8),
        textcoords="offset points",
        va="top",
        fontsize=10,
        color="0.3",
    )


def _draw_scores(ax, report: dict, words: _Words) -> None:
    ax.set_label("scores")
    s = report["scores"]
    n = max(s["n_eval"], 1)
    labels = [
        words("字的准确率", "characters right", "\n"),
        words("完全听对的句子", "recordings exactly right", "\n"),
    ]
    generic = [s["chars_before"], 100 * s["phrases_before"] / n]
    personal = [s["chars_after"], 100 * s["phrases_after"] / n]
    notes_generic = [f"{generic[0]:.0f}%", f"{s['phrases_before']} / {s['n_eval']}"]
    notes_personal = [f"{personal[0]:.0f}%", f"{s['phrases_after']} / {s['n_eval']}"]
    y = [1.0, 0.0]
    ax.barh([v + 0.18 for v in y], generic, height=0.34, color=GREY, label=words("通用模型", "generic model"))
    ax.barh(
        [v - 0.18 for v in y], personal, height=0.34, color=GREEN, label=words("个人模型", "personal model")
    )
    for pos, g, p, ng, np_ in zip(y, generic, personal, notes_generic, notes_personal):
        ax.text(g + 1, pos + 0.18, ng, va="center", fontsize=10, color="0.3")
        ax.text(p + 1, pos - 0.18, np_, va="center", fontsize=12, color=GREEN)
    ax.set_yticks(y, labels, fontsize=11)
    ax.set_xlim(0, 112)
    ax.set_xticks([0, 25, 50, 75, 100], ["0%", "25%", "50%", "75%", "100%"])
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, fontsize=10, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_phrases(ax, rows: list[dict], shown: list[dict], words: _Words) -> None:
    ax.set_label("phrases")
    ax.axis("off")
    columns = (0.0, 0.05, 0.37, 0.69)
    heads = (
        "",
        words("说的", "said"),
        words("通用模型听成", "generic model heard"),
        words("个人模型听成", "personal model heard"),
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(len(shown) + 0.2, -1.6)  # row 0 at the top
    ax.text(0, -1.4, words("每句话", "each phrase"), fontsize=13, va="center")
    for x, head in zip(columns, heads):
        ax.text(x, -0.6, head, fontsize=10, color="0.35", va="center")
    for i, row in enumerate(shown):
        y, number = i + 0.3, i + 1
        if i % 2 == 0:
            ax.axhspan(y - 0.5, y + 0.5, color="0.95", zorder=0)
        star = "" if row["trained_on"] else " *"
        ax.text(columns[0], y, f"{number}.", fontsize=10, color="0.4", va="center")
        ax.text(columns[1], y, words.text(row["said"], number, "phrase") + star, fontsize=11, va="center")
        for x, key in ((columns[2], "generic"), (columns[3], "personal")):
            right = row[f"{key}_right"]
            heard = words.text(row[key], number, "")
            ax.text(
                x,
                y,
                f"{RIGHT if right else WRONG} {heard}".rstrip(),
                fontsize=11,
                va="center",
                color=GREEN if right else RED,
            )
    notes = []
    if len(rows) > len(shown):
        notes.append(
            words(
                f"另有 {len(rows) - len(shown)} 句，见 report.txt",
                f"{len(rows) - len(shown)} more in report.txt",
                "；",
            )
        )
    if any(not row["trained_on"] for row in shown):
        notes.append(words("* 训练时没有录过这句", "* not in the training recordings", "  "))
    if not words.chinese and any(has_cjk(row["said"]) for row in rows):
        notes.append(
            "no Chinese font found: phrases are numbered as in report.txt (install fonts-wqy-zenhei)"
        )
    if notes:
        ax.text(0, len(shown) + 0.1, "    ".join(notes), fontsize=9, color="0.35", va="center")


def _draw_progress(ax, report: dict, words: _Words) -> None:
    """For the technician: validation accuracy per step (when there was a validation set) over the loss."""
    ax.set_label("progress")
    ax.set_title(
        words("训练过程（技术细节）", "training progress (for the technician)"), fontsize=10, loc="left"
    )
    losses = report["history"]["loss"]
    if losses:
        ax.plot(*zip(*losses), color=GREY, linewidth=1, label=words("训练损失", "training loss"))
    ax.set_xlabel(words("训练步数", "training step"))
    ax.set_ylabel(words("训练损失", "training loss"), color="0.4")
    val = report["history"].get("val", [])
    if not val:
        ax.text(
            0.99,
            0.95,
            words(
                "没有留出验证句子：无验证曲线", "no validation phrases held out: no validation curve", "\n"
            ),
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=9,
            color="0.35",
        )
        return
    acc = ax.twinx()
    steps = [step for step, _ in val]
    acc.plot(
        steps,
        [100 * max(0.0, 1 - c) for _, c in val],
        "o-",
        color=GREEN,
        label=words("验证句子的字准确率", "validation phrases: characters right"),
    )
    kept = [c for step, c in val if step == report["best_step"]]
    if kept:
        acc.plot(
            [report["best_step"]],
            [100 * max(0.0, 1 - kept[0])],
            "*",
            markersize=16,
            color="#f9a825",
            label=words("保留的一版", "kept step"),
        )
    if report.get("eval_is_validation"):  # the same phrases: the generic model's score is comparable
        generic = 100 * max(0.0, 1 - report["cer_before"])
        acc.axhline(generic, color=GREY, linestyle="--", label=words("通用模型", "generic model"))
    acc.set_ylim(0, 105)
    acc.set_ylabel(words("字准确率 %", "characters right %"), color=GREEN)
    handles = [*ax.get_legend_handles_labels()[0], *acc.get_legend_handles_labels()[0]]
    acc.legend(handles=handles, loc="lower right", fontsize=8)
