"""The training report: report.json for machines, report.txt and report.png for the family and the technician.

report.txt and report.png open in plain words, Chinese first (the families are Chinese-speaking) then English:
did the personal model get better, and how each test phrase came out before and after. The jargon (CER,
steps, loss, the kept step, settings) follows in a second section for the technician. Every sentence that
judges the model comes from ``verdict`` and ``advice``, so a change in how the verdict is worded stays there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from resonance.fsutil import write_json_atomic, write_text_atomic
from resonance.text import normalize_for_cer, to_simplified
from resonance.train.report_plot import RIGHT, WRONG, plot
from resonance.train.significance import (
    BETTER,
    INCONCLUSIVE,
    MIN_DECISIVE_PHRASES,
    WORSE,
    Comparison,
    compare,
    phrase_errors,
)

FEW_RECORDINGS = 30  # below this the guide expects little gain
GOOD_RECORDINGS = 50
FEW_EVAL_RECORDINGS = 5  # a verdict on fewer test recordings is a rough guess


@dataclass(frozen=True)
class Scores:
    """The numbers the plain words are made of: how much of the test came out right, before and after."""

    n_eval: int  # test recordings
    chars_before: float  # % of characters right, generic model (CER counts insertions: clipped at 0)
    chars_after: float  # … personal model
    phrases_before: int  # test recordings the generic model got exactly right
    phrases_after: int  # … the personal model


@dataclass(frozen=True)
class Verdict:
    better: bool  # the personal model is better, and the test recordings show it beyond luck
    zh: str  # the report's first line, in plain words
    en: str  # the same, in English (report.json's "verdict")
    # BETTER / WORSE (beyond luck) or INCONCLUSIVE (train/significance.py); only WORSE holds the model back
    result: str = INCONCLUSIVE


@dataclass(frozen=True)
class Advice:
    """A warning in plain words for the family (zh, en) and in the technician's terms (flags, CER)."""

    zh: str
    en: str
    technical: str


def exactly_right(reference: str, hypothesis: str) -> bool:
    """Every character right, the way CER counts them (script, punctuation and spaces do not matter)."""
    return normalize_for_cer(reference) == normalize_for_cer(hypothesis)


def scores(report: dict) -> Scores:
    rows = report["utterances"]
    return Scores(
        n_eval=report["n_eval"],
        chars_before=100 * max(0.0, 1 - report["cer_before"]),
        chars_after=100 * max(0.0, 1 - report["cer_after"]),
        phrases_before=sum(exactly_right(r["reference"], r["before"]) for r in rows),
        phrases_after=sum(exactly_right(r["reference"], r["hypothesis"]) for r in rows),
    )


def comparison(report: dict) -> Comparison:
    """Personal against generic model on the test recordings: change in character accuracy, its 95 % interval
    (paired bootstrap over phrases), and whether it is beyond luck (train/significance.py)."""
    rows = report["utterances"]
    refs = [r["reference"] for r in rows]
    return compare(phrase_errors(refs, [r["before"] for r in rows], [r["hypothesis"] for r in rows]))


def blocks_deployment(report: dict) -> bool:
    """Whether `resonance export` refuses the adapter (and `train` exits 3): the personal model is worse than
    the generic one beyond luck. A report written before the comparison existed: any loss blocks."""
    found = report.get("comparison")
    if isinstance(found, dict) and "result" in found:
        return found["result"] == WORSE
    return report.get("improved") is False


def verdict(report: dict) -> Verdict:
    """The one sentence, in each language, on whether the personal model recognises the speaker better.

    Better means fewer mistakes (lower CER) that a person would also see: more characters or more whole
    recordings right (a model that only loops less still gets nothing right), on enough test phrases to rule
    out luck. With few test phrases (the validation split of 30 recordings holds 3) the sentence says the test
    cannot tell, with the interval, and does not hold the model back: only a loss beyond luck does.
    """
    s = scores(report)
    c = comparison(report)
    fewer_mistakes = report["cer_after"] < report["cer_before"]
    visible = round(s.chars_after) > round(s.chars_before) or s.phrases_after > s.phrases_before
    numbers_zh = (
        f"字的准确率 {s.chars_before:.0f}% → {s.chars_after:.0f}%，{s.n_eval} 句里完全听对 "
        f"{s.phrases_before} → {s.phrases_after} 句"
    )
    numbers_en = (
        f"characters right {s.chars_before:.0f}% -> {s.chars_after:.0f}%, recordings exactly right "
        f"{s.phrases_before} -> {s.phrases_after} of {s.n_eval}"
    )
    few_zh = f"检验的句子太少（{c.n_phrases} 句），还不能确定"
    few_en = f"{c.n_phrases} test phrase{'s are' if c.n_phrases != 1 else ' is'} too few to be sure"
    if c.result == WORSE:
        return Verdict(
            False,
            f"没有变得更准：{numbers_zh}。先不要用这个模型：多录一些句子，再训练一次。",
            f"NOT better: {numbers_en}. Do not use this model yet: record more phrases and train again.",
            WORSE,
        )
    if c.result == BETTER and fewer_mistakes and visible:
        return Verdict(
            True,
            f"认得更准了：{s.n_eval} 句检验录音里，现在完全听对 {s.phrases_after} 句（原来 {s.phrases_before} 句）；"
            f"字的准确率从 {s.chars_before:.0f}% 提高到 {s.chars_after:.0f}%。",
            f"Understands better: of {counted(s.n_eval, 'test recording')}, {s.phrases_after} now come out exactly right "
            f"(before: {s.phrases_before}); characters right went from {s.chars_before:.0f}% to "
            f"{s.chars_after:.0f}%.",
            BETTER,
        )
    if fewer_mistakes and visible:
        return Verdict(
            False,
            f"看起来更准了，但{few_zh}：{numbers_zh}。可以先用；把这些句子再录一遍来检验，结果更可靠。",
            f"Looks better, but {few_en}: {numbers_en}. You can use it; record the phrases once more to check "
            "it properly.",
            INCONCLUSIVE,
        )
    return Verdict(
        False,
        f"没有明显变好：{numbers_zh}。{few_zh}：可以先用，把这些句子再录一遍来检验。",
        f"No clear gain: {numbers_en}. {few_en[0].upper() + few_en[1:]} either way: you can use it, and record "
        "the phrases once more to check it.",
        INCONCLUSIVE,
    )


def advice(report: dict) -> list[Advice]:
    """What a person should know about how far to trust the verdict, and what to do about it."""
    found = []
    n = report["n_train"] + report["n_validation"]
    if n < FEW_RECORDINGS:
        found.append(
            Advice(
                f"录音只有 {n} 段：请至少录 {GOOD_RECORDINGS} 段（最好 100 段）短句。",
                f"Only {counted(n, 'recording')}: record at least {GOOD_RECORDINGS} (better 100) short phrases.",
                f"Only {counted(n, 'recording')}: record at least {GOOD_RECORDINGS} (better 100) short phrases.",
            )
        )
    if report["n_eval"] < FEW_EVAL_RECORDINGS:
        found.append(
            Advice(
                f"只用了 {report['n_eval']} 句录音来检验，上面的结果只是粗略估计：把这些句子再录一遍用来检验，结果更可靠。",
                f"Only {counted(report['n_eval'], 'recording')} {'was' if report['n_eval'] == 1 else 'were'} "
                "used to check: the result above is a rough guess. "
                "Record the phrases once more to check with.",
                f"Only {counted(report['n_eval'], 'evaluation recording')}: the accuracy above is a rough guess. "
                "Record a second take of the phrases and pass it as --eval-data.",
            )
        )
    trained_on = report.get("n_eval_trained_on") or 0
    if trained_on:
        found.append(
            Advice(
                f"检验用的 {report['n_eval']} 句录音里有 {trained_on} 句也用来训练过，所以上面的结果偏乐观："
                "把句子再录一遍用来检验更公平。",
                f"{trained_on} of the {counted(report['n_eval'], 'recording')} used to check "
                f"{'was' if trained_on == 1 else 'were'} also used to train, so "
                "the result above is optimistic: record the phrases once more to check with.",
                f"{trained_on} of the {counted(report['n_eval'], 'test recording')} "
                f"{'was' if trained_on == 1 else 'were'} trained on: the measure is "
                "optimistic; test on another take (a second recording of the phrases as --eval-data).",
            )
        )
    if len(report["train_texts"]) < max(3, report["n_train"] // 4):
        found.append(
            Advice(
                "不同的句子太少：模型可能只学会这几句。请多录一些不同的句子。",
                "Few different phrases: the model may learn only these. Vary the phrases.",
                "Few distinct phrases: the model may only learn these. Vary the phrases.",
            )
        )
    if report.get("eval_is_validation") and _kept_best(report):
        found.append(
            Advice(
                "检验用的句子也参与了挑选模型，所以上面的结果偏乐观：把句子再录一遍用来检验更公平。",
                "The phrases used to check also helped choose the model, so the result above is optimistic: "
                "record the phrases once more to check with.",
                "The evaluation recordings are the validation phrases that also chose the kept step, so the "
                "personalised accuracy above is optimistic. Pass a second take as --eval-data for a fair measure.",
            )
        )
    elif report.get("eval_is_validation"):
        found.append(
            Advice(
                "检验用的句子没有参与训练：上面是模型对没录过的句子的表现，录过的句子通常认得更准。"
                "把句子再录一遍用来检验，结果更全面。",
                "The phrases used to check were left out of training: the result above is for phrases it never "
                "heard from you; the recorded ones usually do better. Record the phrases once more to check with.",
                "The evaluation recordings are the validation phrases, held out of training: unseen phrases "
                "only, so the measure is fair but harsh. Pass a second take as --eval-data to measure the "
                "recorded phrases too.",
            )
        )
    rose = _kept_best(report) and overfitting_warning(
        report["history"].get("val", []), report["best_step"], report.get("selection_margin") or 0.0
    )
    if rose:
        found.append(
            Advice(
                "训练后期反而变差了，已自动保留较早、更好的一版。录音越多，训练越稳。",
                "Later training made it worse, so an earlier, better version was kept. More recordings make "
                "training steadier.",
                rose,
            )
        )
    return found


def counted(n: int, noun: str) -> str:
    """ "1 recording", "26 recordings": a report on one recording is read too (a retest, a tiny eval set)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def overfitting_warning(val: list[list[float]], kept_step: int, margin: float) -> str | None:
    """A warning when an earlier step was kept because every later evaluation was worse beyond the margin.

    ``val``: [step, validation CER] per evaluation; the trainer keeps the latest within ``margin`` of the best.
    """
    later = [cer for step, cer in val if step > kept_step]
    if not later or not all(cer > min(c for _, c in val) + margin for cer in later):
        return None  # the last evaluation was kept, or these numbers are not an over-fitting run
    return (
        f"Validation CER rose after step {kept_step} (over-fitting): the {len(later)} later evaluation(s), "
        f"up to step {val[-1][0]}, were more than {margin:.3f} above the best, so step {kept_step} was kept, "
        "not the last one."
    )


def write_report(folder: Path, report: dict) -> dict:
    """Write the three files; return the report with its verdict and warnings added (``with_verdict``)."""
    report = with_verdict(report)
    write_json_atomic(Path(folder) / "report.json", report)
    write_text_atomic(Path(folder) / "report.txt", render_text(report))
    plot(report, phrase_rows(report), Path(folder) / "report.png")
    return report


def with_verdict(report: dict) -> dict:
    """The trainer's report plus what is said about it. "verdict" (English) and "warnings" (the technician's
    wording) are report.json's keys from before; the plain words in both languages are added beside them."""
    said, found = verdict(report), advice(report)
    return {
        **report,
        "verdict": said.en,
        "verdict_zh": said.zh,
        "verdict_better": said.better,
        "verdict_result": said.result,
        "comparison": comparison(report).to_json(),
        "warnings": [a.technical for a in found],
        "advice": [{"zh": a.zh, "en": a.en} for a in found],
        "scores": asdict(scores(report)),
    }


def model_card(report: dict, made_with: dict, name: str) -> str:
    """The adapter folder's README.md (instead of peft's empty template): what it is and how to use it."""
    window = report["window_seconds"]
    full = made_with.get("finetune") == "full"
    half = {"encoder": "the encoder", "decoder": "the decoder"}.get(
        made_with.get("adapt"), "encoder and decoder"
    )
    if full:
        what = (
            f"The fully fine-tuned weights of {half} of Whisper (finetuned_weights.safetensors: they replace "
            "the base model's), trained by `resonance train` on one person's recordings."
        )
        recipe = f"- full fine-tuning of {half}, learning rate {made_with['learning_rate']:g}"
    else:
        what = "A LoRA adapter for Whisper, trained by `resonance train` on one person's recordings."
        decoder_r = made_with.get("decoder_lora_r")
        recipe = (
            f"- LoRA r={made_with['lora_r']}, alpha={made_with['lora_alpha']} on "
            f"{', '.join(made_with['target_modules'])} of {half}"
            + (f" (decoder r={decoder_r})" if decoder_r else "")
        )
    if made_with.get("distill_weight"):
        recipe += f"; decoder kept near the generic one (KL weight {made_with['distill_weight']:g})"
    return "\n".join(
        [
            f"# Resonance adapter `{name}`",
            "",
            what,
            "",
            report["verdict_zh"],
            "",
            report["verdict"],
            "",
            f"- base model: `{made_with['base_model']}`, language `{made_with['language']}`, "
            f"audio window {window:g} s",
            recipe,
            f"- trained on {counted(report['n_train'], 'recording')} of `{made_with['data']}`; CER "
            f"{report['cer_before']:.3f} -> {report['cer_after']:.3f} on {report['eval_source']}",
            "- details: report.txt, report.json, report.png; every option used: train_config.json",
            "",
            "## Use it",
            "",
            "```bash",
            f"resonance export --adapter {made_with['out']} --out bundles/{name} --quantize int8   # for the device",
            "```",
            "",
            "In Python (PyTorch):",
            "",
            "```python",
            "from resonance.train.personal import load_personal_model",
            f'model, processor = load_personal_model("{made_with["out"]}")'
            + ("" if full else "  # peft model; merge=True for a plain one"),
            "```",
            "",
            f"With transformers{'' if full else ' + peft'} alone, cut the base model's encoder to the {window:g} s "
            "window it was trained on before applying the adapter (`resonance.train.window.shorten_audio_window("
            f"base, {window:g})`): the processor saved here makes {window:g} s features.",
            "",
        ]
    )


def phrase_rows(report: dict) -> list[dict]:
    """One row per test recording: what was said, what each model heard (Simplified, as the runtime writes
    it), and whether each got it exactly right. report.json keeps the models' raw output."""
    seen = set(report["train_texts"])
    return [
        {
            "said": u["reference"],
            "generic": to_simplified(u["before"]),
            "personal": to_simplified(u["hypothesis"]),
            "generic_right": exactly_right(u["reference"], u["before"]),
            "personal_right": exactly_right(u["reference"], u["hypothesis"]),
            "trained_on": u["reference"] in seen,
        }
        for u in report["utterances"]
    ]


def render_text(report: dict) -> str:
    """report.txt: the verdict first (zh, then en), advice, each phrase before -> after, then the details."""
    lines = [report["verdict_zh"], report["verdict"], ""]
    if report["advice"]:
        lines.append("请注意 / Please note:")
        for item in report["advice"]:
            lines += [f"  - {item['zh']}", f"    {item['en']}"]
        lines.append("")
    rows = phrase_rows(report)
    lines += [
        f"每句话：说的 | 通用模型听成 | 个人模型听成（{RIGHT} 全对，{WRONG} 有错）",
        f"Each phrase: said | generic model heard | personal model heard ({RIGHT} all right, {WRONG} mistakes)",
    ]
    width = len(str(len(rows)))
    for i, row in enumerate(rows, 1):
        untrained = "" if row["trained_on"] else "   (*)"
        lines.append(
            f"  {i:>{width}}. {row['said']} | {_mark(row['generic_right'])} {_cut(row['generic'])} | "
            f"{_mark(row['personal_right'])} {_cut(row['personal'])}{untrained}"
        )
    if any(not row["trained_on"] for row in rows):
        lines.append("  (*) 训练时没有录过这句 / a phrase that was not in the training recordings")
    return "\n".join([*lines, "", *technical_lines(report)]) + "\n"


def technical_lines(report: dict) -> list[str]:
    """The second section: the measures and settings behind the verdict, in the technician's terms."""
    lines = [
        "技术细节 / Technical details",
        "-" * 28,
        f"character error rate (CER, lower is better): generic {report['cer_before']:.3f} -> personalised "
        f"{report['cer_after']:.3f}, on {report['eval_source']} ({counted(report['n_eval'], 'recording')}); transcripts "
        f"compared in Simplified characters without punctuation; {decoding_words(report)}",
        f"trained on {counted(report['n_train'], 'recording')} ({report['data_seconds']} s of audio): {report['steps']} "
        f"steps in {report['train_seconds']} s on {report['device']} ({report['samples_per_second']} samples/s), "
        f"audio window {report['window_seconds']:g} s",
        kept_step_line(report),
    ]
    val = report["history"].get("val", [])
    if val:
        lines.append("validation CER per evaluation: " + ", ".join(f"step {s}: {c:.3f}" for s, c in val))
    settings = report.get("settings")
    if settings:
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    c = report["comparison"]
    why = ""
    if c["result"] == INCONCLUSIVE and c["n_phrases"] < MIN_DECISIVE_PHRASES:
        why = (
            f"; fewer than {MIN_DECISIVE_PHRASES} phrases cannot show a difference beyond luck whatever the "
            "interval (an exact sign-flip test's smallest p-value is 2/2^n)"
        )
    lines.append(
        f"personal vs generic, paired bootstrap over {counted(c['n_phrases'], 'phrase')}: character accuracy "
        f"{100 * c['change']:+.1f} points, 95 % interval {100 * c['low']:+.1f} to {100 * c['high']:+.1f}: "
        f"{c['result']}{why}"
    )
    if blocks_deployment(report):  # what export checks
        lines.append("`resonance export` refuses this adapter unless --allow-worse is given.")
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return lines


def decoding_words(report: dict) -> str:
    """How the two models' transcripts were made (the device decodes with beam search unless configured)."""
    beams = (report.get("settings") or {}).get("eval_beams", 1)
    personal = (
        "greedily (the device's beam search is usually a little better)"
        if beams == 1
        else f"with {beams} beams"
    )
    return f"the personalised model decoded {personal}, the generic one greedily"


def _kept_best(report: dict) -> bool:
    """Whether validation picked the kept step (--keep best; reports made before --keep existed all did)."""
    return report.get("keep", "best") == "best"


def kept_step_line(report: dict) -> str:
    """Which step's weights the adapter holds, and why (never "kept 0": without validation it is the last)."""
    averaged = (report.get("settings") or {}).get("average_epochs", 1)
    if averaged > 1:
        return (
            f"kept the mean of the weights at the end of the last {averaged} epochs, up to the last step "
            f"({report['steps']}) (--average-epochs {averaged})"
        )
    if not report["history"].get("val"):
        return (
            f"no validation phrases (--val-fraction 0): the weights after the last step ({report['steps']}) "
            "were kept"
        )
    if not _kept_best(report):
        last = report.get("best_val_cer")
        last_text = "" if last is None else f" (validation CER there {last:.3f})"
        return (
            f"kept the weights after the last step ({report['steps']}){last_text}: every epoch is trained "
            "(--keep last)"
        )
    margin = report.get("selection_margin")
    rule = "the lowest" if margin is None else f"the latest within {margin:.3f} of the lowest"
    best = report.get("best_val_cer")
    best_text = "" if best is None else f" (validation CER {best:.3f})"
    return f"kept the weights of step {report['best_step']} of {report['steps']}{best_text}: {rule} validation CER"


def _mark(right: bool) -> str:
    return RIGHT if right else WRONG


def _cut(heard: str, limit: int = 40) -> str:
    """A model that loops "hears" a paragraph: one line per phrase is enough here (report.json keeps it all)."""
    return heard if len(heard) <= limit else heard[: limit - 1] + "…"
