"""The recipe study behind the training defaults (README, "Recipe study"): named variants of the recipe, each
one change against the recipe it starts from, run as learning curves in one process (the generic model decodes
EVAL once).

    python -m resonance.train.study --data take1 --eval-data take2 --base-model models/whisper-base \\
        --out runs/study --sizes 50 --seeds 1 --variants full-encoder-5e-5,lora-both,encoder

Writes <out>/<variant>/curve.json (+ curve.md, the adapters) and <out>/study.json: one row per variant and
size with its options, mean ± sd accuracy and training time. Runs already in a variant's curve.json are not
repeated, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from resonance.errors import ResonanceError
from resonance.fsutil import write_json_atomic, write_text_atomic
from resonance.train.config import TrainConfig

# name -> the options that make the variant, each spelt out in full (finetune, adapt, learning rate) so that a
# name means the same recipe whatever TrainConfig's defaults are. The study's winner, full-encoder-5e-5, with
# the last epoch kept (full-encoder-keep-last) is today's default; lora-both is the default before the study
# (it was called "default" then). The rows before --keep existed kept the best validation step, with early
# stopping, so the variants they name say so.
LORA_BOTH = {"finetune": "lora", "adapt": "both", "keep": "best"}  # LoRA r 16 on encoder and decoder, lr 5e-4
FULL_ENCODER = {"finetune": "full", "adapt": "encoder", "learning_rate": 5e-5, "keep": "best"}
VARIANTS: dict[str, dict] = {
    "lora-both": LORA_BOTH,
    # where to adapt
    "encoder": {**LORA_BOTH, "adapt": "encoder"},
    "decoder": {**LORA_BOTH, "adapt": "decoder"},
    "decoder-r4": {**LORA_BOTH, "decoder_lora_r": 4},
    "decoder-attn": {**LORA_BOTH, "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj"]},
    # capacity
    "r8": {**LORA_BOTH, "lora_r": 8, "lora_alpha": 16},
    "r32": {**LORA_BOTH, "lora_r": 32, "lora_alpha": 64},
    "r64": {**LORA_BOTH, "lora_r": 64, "lora_alpha": 128},
    "encoder-r32": {**LORA_BOTH, "adapt": "encoder", "lora_r": 32, "lora_alpha": 64},
    # full fine-tuning
    "full-encoder-1e-5": {**FULL_ENCODER, "learning_rate": 1e-5},
    "full-encoder-5e-5": FULL_ENCODER,
    "full-encoder-1e-4": {**FULL_ENCODER, "learning_rate": 1e-4},
    "full-all-1e-5": {"finetune": "full", "adapt": "both", "learning_rate": 1e-5},
    "full-all-5e-5": {"finetune": "full", "adapt": "both", "learning_rate": 5e-5},
    # keeping the generic decoder's language
    "distill-0.5": {**LORA_BOTH, "distill_weight": 0.5},
    "distill-2": {**LORA_BOTH, "distill_weight": 2.0},
    # on top of the default
    "full-encoder-augment": {**FULL_ENCODER, "augment": True},
    # a longer window: the frozen decoder was trained on 30 s of encoder output, the default cuts it to 5 s
    "full-encoder-window-10": {**FULL_ENCODER, "window_seconds": 10.0},
    "full-encoder-window-30": {**FULL_ENCODER, "window_seconds": 30.0},
    "full-encoder-smooth-0.1": {**FULL_ENCODER, "label_smoothing": 0.1},
    "full-encoder-12-epochs": {**FULL_ENCODER, "epochs": 12.0},
    "full-encoder-batch-4": {**FULL_ENCODER, "batch_size": 4},
    # which weights are kept: every epoch trained and the last kept, validation only measuring
    "full-encoder-keep-last": {**FULL_ENCODER, "keep": "last"},
    # ... and no phrase held out for validation when the eval data measures the model anyway
    "full-encoder-keep-last-all": {**FULL_ENCODER, "keep": "last", "val_fraction": 0.0},
    "lora-both-keep-last": {**LORA_BOTH, "keep": "last"},
    # more steps for small takes: 30 recordings give 32 steps in 8 epochs, 100 give 96
    "full-encoder-keep-last-16-epochs": {**FULL_ENCODER, "keep": "last", "epochs": 16.0},
    # the mean of the weights at the end of the last 4 of 8 epochs (checkpoint averaging)
    "full-encoder-average-4": {**FULL_ENCODER, "keep": "last", "average_epochs": 4},
}


def main(argv: list[str] | None = None) -> int:
    from resonance.train.curve import aggregate, learning_curve

    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ResonanceError(f"unknown variant(s): {', '.join(unknown)}", f"known: {', '.join(VARIANTS)}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    base = dict(
        data=args.data,
        eval_data=args.eval_data,
        base_model=args.base_model,
        threads=args.threads,
        out=str(args.out),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    study_path = args.out / "study.json"
    study = json.loads(study_path.read_text(encoding="utf-8")) if study_path.is_file() else []
    generic_cache = _DiskCache(args.out / "generic.json")
    for name in names:
        out = args.out / name
        done = out / "curve.json"
        rows = json.loads(done.read_text(encoding="utf-8")) if done.is_file() else []
        wanted = {(size, seed) for size in sizes for seed in range(args.seeds)}
        if {(r["size"], r["seed"]) for r in rows} != wanted:  # runs already in curve.json are kept
            config = variant_config(name, **{**base, "out": str(out)})
            rows = learning_curve(config, sizes, out, args.seeds, generic_cache, done=rows)
        study = [s for s in study if s["variant"] != name]
        for summary in aggregate(rows):
            study.append({"variant": name, "options": VARIANTS[name], **summary, "runs": rows})
        write_json_atomic(study_path, study)
        write_text_atomic(args.out / "study.md", render(study))
    print(render(study))
    return 0


def variant_config(name: str, **where) -> TrainConfig:
    """The TrainConfig of variant ``name``, with ``where`` (data, eval_data, base_model, threads, out)."""
    return TrainConfig(**{**where, **VARIANTS[name]})


class _DiskCache(dict):
    """The trainer's generic-transcript cache kept in a JSON file, so later studies skip the generic decode
    (its keys, tuples of base model, language and EVAL's clips and texts, are stored as JSON text)."""

    def __init__(self, path: Path):
        super().__init__(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {})
        self.path = path

    def __contains__(self, key) -> bool:
        return super().__contains__(json.dumps(key, ensure_ascii=False))

    def __getitem__(self, key):
        return super().__getitem__(json.dumps(key, ensure_ascii=False))

    def __setitem__(self, key, value) -> None:
        super().__setitem__(json.dumps(key, ensure_ascii=False), value)
        write_json_atomic(self.path, dict(self))


def render(study: list[dict]) -> str:
    """The study as one table: a line per variant and size, mean ± sd over the seeds."""
    lines = [
        "| variant | options | recordings | seeds | seen char | seen exact | unseen char | unseen exact "
        "| train time | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in study:
        options = ", ".join(f"{k}={v}" for k, v in s["options"].items()) or "the defaults of its time"
        loads = [value for run in s["runs"] if run["size"] == s["size"] for value in run.get("load", [])]
        lines.append(
            f"| {s['variant']} | {options} | {s['size']} | {len(s['seeds'])} | "
            + " | ".join(
                _pct(s, f"personal_{key}")
                for key in ("seen_char_acc", "seen_exact", "unseen_char_acc", "unseen_exact")
            )
            + f" | {s['train_seconds']:.0f} s | {min(loads, default=0):.1f}-{max(loads, default=0):.1f} |"
        )
    return "\n".join(lines) + "\n"


def _pct(summary: dict, key: str) -> str:
    value, sd = summary[key], summary.get(f"{key}_sd")
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m resonance.train.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="training take (speaker A: take1)")
    p.add_argument("--eval-data", required=True, help="evaluation take (speaker A: take2)")
    p.add_argument("--base-model", default="pypi:whisper-base")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", default="50")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--variants", default="full-encoder-5e-5", help=f"comma-separated, of: {', '.join(VARIANTS)}"
    )
    return p


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ResonanceError as exc:
        sys.exit(f"error: {exc}")
