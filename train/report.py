"""The training report: report.json for machines, report.txt in plain words, report.png with the curves."""

from __future__ import annotations

from pathlib import Path

from resonance.fsutil import write_json_atomic, write_text_atomic
from resonance.text import to_simplified

FEW_RECORDINGS = 30  # below this the guide expects little gain
GOOD_RECORDINGS = 50


def verdict(report: dict) -> tuple[str, list[str]]:
    """One sentence on whether the model got better, and the warnings a person should read."""
    before, after = report["cer_before"], report["cer_after"]
    # CER counts insertions too, so a looping model can pass 1.0; accuracy stops at 0 %.
    acc_before, acc_after = 100 * max(0.0, 1 - before), 100 * max(0.0, 1 - after)
    if after < before:
        line = (
            f"The personalised model is better: character accuracy {acc_before:.0f}% -> {acc_after:.0f}% "
            f"({acc_after - acc_before:+.0f} points) on {report['n_eval']} evaluation recordings."
        )
    else:
        line = (
            f"The personalised model is NOT better (character accuracy {acc_before:.0f}% -> {acc_after:.0f}%). "
            "Do not deploy it: `resonance export` refuses it unless you pass --allow-worse."
        )
    warnings = []
    n = report["n_train"] + report["n_validation"]
    if n < FEW_RECORDINGS:
        warnings.append(f"Only {n} recordings: record at least {GOOD_RECORDINGS} (better 100) short phrases.")
    if report["n_eval"] < 5:
        warnings.append(
            f"Only {report['n_eval']} evaluation recordings: the accuracy above is a rough guess. "
            "Record a second take of the phrases and pass it as --eval-data."
        )
    if len(report["train_texts"]) < max(3, report["n_train"] // 4):
        warnings.append("Few distinct phrases: the model may only learn these. Vary the phrases.")
    if report.get("eval_is_validation"):
        warnings.append(
            "The evaluation recordings are the validation phrases that also chose the kept step, so the "
            "personalised accuracy above is optimistic. Pass a second take as --eval-data for a fair measure."
        )
    rose = overfitting_warning(
        report["history"].get("val", []), report["best_step"], report.get("selection_margin") or 0.0
    )
    return line, warnings + ([rose] if rose else [])


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
    """Write the three files; return the report with its verdict and warnings added."""
    line, warnings = verdict(report)
    report = {**report, "verdict": line, "warnings": warnings}
    write_json_atomic(Path(folder) / "report.json", report)
    write_text_atomic(Path(folder) / "report.txt", render_text(report))
    plot(report, Path(folder) / "report.png")
    return report


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
            report["verdict"],
            "",
            f"- base model: `{made_with['base_model']}`, language `{made_with['language']}`, "
            f"audio window {window:g} s",
            recipe,
            f"- trained on {report['n_train']} recordings of `{made_with['data']}`; CER "
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


def render_text(report: dict) -> str:
    lines = [
        "Resonance training report",
        "=" * 25,
        report["verdict"],
        "",
        *(f"WARNING: {w}" for w in report["warnings"]),
        "",
        f"character error rate (CER): generic {report['cer_before']:.3f} -> personalised {report['cer_after']:.3f}",
        f"evaluated on: {report['eval_source']} ({report['n_eval']} recordings)",
        f"trained on {report['n_train']} recordings ({report['data_seconds']} s of audio), "
        f"{report['steps']} steps (kept {report['best_step']}{_margin(report)}), {report['train_seconds']} s on {report['device']} "
        f"({report['samples_per_second']} samples/s), audio window {report['window_seconds']:.0f} s",
        "",
        "per recording: reference | generic | personalised (in Simplified characters, as the runtime writes "
        "them and as CER is counted)",
    ]
    for row in report["utterances"]:  # report.json keeps the models' raw output
        lines.append(
            f"  {row['reference']} | {to_simplified(row['before'])} | {to_simplified(row['hypothesis'])}"
        )
    return "\n".join(lines) + "\n"


def _margin(report: dict) -> str:
    margin = report.get("selection_margin")
    return "" if margin is None else f": the latest within {margin:.3f} of the best validation CER"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_ax = plt.subplots(figsize=(7, 4))
    losses = report["history"]["loss"]
    if losses:
        loss_ax.plot(*zip(*losses), color="tab:blue", label="training loss")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("training loss", color="tab:blue")
    val = report["history"].get("val", [])
    if val:
        cer_ax = loss_ax.twinx()
        cer_ax.plot(*zip(*val), "o-", color="tab:red", label="validation CER")
        cer_ax.axhline(report["cer_before"], color="gray", linestyle="--", label="generic CER (eval)")
        cer_ax.set_ylabel("CER", color="tab:red")
        cer_ax.legend(loc="upper right")
    loss_ax.set_title(f"CER {report['cer_before']:.2f} -> {report['cer_after']:.2f}")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
