"""`resonance update`, `resonance rollback` and `resonance eval loop` (registration only: torch loads when
update or the loop runs; rollback is torch-free, it runs on the device)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from resonance.cli_common import add_command
from resonance.constants import OFFLINE_BASE_MODEL
from resonance.runtime.cli import add_config_option, device_config_from_args
from resonance.update.starts import DEFAULT_START, SCRATCH, STARTS, WARM

UPDATE_EXAMPLES = """\
  resonance update --adapter adapters/grandpa --new collected/grandpa \\
      --bundle bundles/grandpa --out adapters/grandpa-2      # --data: the adapter's own, by default
  resonance update ... --judge-only          # train and judge, keep the served bundle whatever the result
  resonance update ... --start warm          # go on from the current adapter: a third of the time, less accurate
  resonance update ... --config my-box.yaml  # judge as the serving device decodes (greedy there: --beam-size 1)
  resonance rollback --bundle bundles/grandpa   # put the previous bundle back
--new is the folder `resonance serve --collect DIR` fills for the patient (DIR/<patient>, the standard
audio/*.wav + labels.json). The served bundle is replaced unless the new model is worse on new recordings
held out of training (significantly, or on two more of them than it is better on; a lone slip is not); a
running server picks it up at its next reload. Exit 0: deployed, 3: not deployed (kept aside under
<models>/.history/<patient>/).
"""

LOOP_EXAMPLES = """\
  resonance eval loop --first ../shared/data/speaker-a/take1 --second ../shared/data/speaker-a/take2 \\
      --out runs/loop                     # 30 recordings, then 4 rounds of 20 corrections (whisper-base)
  resonance eval loop ... --start warm --out runs/loop-warm   # the other way to train each update
writes loop.json and loop.md (the table) under --out after every round; run it again to continue;
--remeasure measures the finished rounds again (after a change of the phrase-board rules).
"""


ROLLBACK_EXAMPLES = """\
  resonance rollback --bundle bundles/grandpa            # serve the model served before this one
  resonance rollback --bundle bundles/grandpa --list     # the patient's earlier bundles, newest first
  resonance rollback --bundle bundles/grandpa --to 20261202T051500Z-not-deployed   # a named one
Without --to: of the bundles served before, the last one exported before the one served now (again: the one
before that; never forward to a newer model). The bundle served until now is kept too (as rolled-back):
nothing is deleted. A running server picks the change up at its next reload.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """`resonance update` and `resonance rollback`."""
    _register_update(sub)
    p = add_command(
        sub,
        "rollback",
        "serve a patient's previous bundle again (the one `resonance update` replaced, or one you name)",
        ROLLBACK_EXAMPLES,
        _run_rollback,
    )
    p.add_argument("--bundle", required=True, type=Path, help="the served bundle: <models>/<patient>")
    p.add_argument("--to", metavar="VERSION", help="the history folder to serve (see --list)")
    p.add_argument("--list", action="store_true", help="list the earlier bundles and change nothing")


def _register_update(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "update",
        "train on the corrections the caregiver collected, judge, and deploy the new model if it is not worse",
        UPDATE_EXAMPLES,
        _run_update,
    )
    p.add_argument("--adapter", required=True, type=Path, help="the patient's current adapter")
    p.add_argument(
        "--data",
        type=Path,
        help="the recordings it was trained on (default: the folder its train_config.json names)",
    )
    p.add_argument(
        "--new",
        required=True,
        type=Path,
        help="recordings collected since: DIR/<patient> of serve --collect DIR",
    )
    p.add_argument("--bundle", required=True, type=Path, help="the served bundle: <models>/<patient>")
    p.add_argument("--out", required=True, type=Path, help="the new adapter folder (must not exist)")
    p.add_argument(
        "--start",
        choices=STARTS,
        default=DEFAULT_START,
        help=f"{SCRATCH}: train from the base model on old + new recordings, the recipe's epochs; {WARM}: go on "
        f"from the current adapter, 3 epochs (a third of the time, less accurate on speaker A: README); "
        f"default {DEFAULT_START}",
    )
    p.add_argument(
        "--epochs",
        type=float,
        help="passes over old + new recordings (default: 3 warm, the recipe's scratch)",
    )
    p.add_argument(
        "--held-out",
        type=float,
        default=0.25,
        help="share of the new recordings kept out of training to judge on (default 0.25, at least 4)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the held-out choice and of training (default 0)"
    )
    p.add_argument("--judge-only", action="store_true", help="never replace the served bundle")
    p.add_argument("--threads", type=int, help="CPU threads for training and judging")
    p.add_argument(
        "--device", help="torch device for training: auto, cpu, cuda (default: the adapter's recipe)"
    )
    add_config_option(p, purpose=" of the device serving the bundle (the judge decodes as it does)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register_eval(eval_sub: argparse._SubParsersAction) -> None:
    """`resonance eval loop` in the `eval` group."""
    p = add_command(
        eval_sub,
        "loop",
        "simulate the correction loop on two takes: train on a few, update round by round, measure each round",
        LOOP_EXAMPLES,
        _run_loop,
    )
    p.add_argument(
        "--first", required=True, type=Path, help="first take: round 0 trains on its first --initial"
    )
    p.add_argument(
        "--second", required=True, type=Path, help="second take of the same phrases (the corrections)"
    )
    p.add_argument("--out", required=True, type=Path, help="folder for adapters, bundles and the table")
    p.add_argument(
        "--base-model", default=OFFLINE_BASE_MODEL, help=f"base model (default {OFFLINE_BASE_MODEL})"
    )
    p.add_argument("--initial", type=int, default=30, help="recordings of round 0 (default 30)")
    p.add_argument("--per-round", type=int, default=20, help="corrections per round (default 20)")
    p.add_argument("--rounds", type=int, default=4, help="update rounds (default 4)")
    p.add_argument(
        "--start",
        choices=STARTS,
        default=DEFAULT_START,
        help=f"how each update trains (default {DEFAULT_START})",
    )
    p.add_argument(
        "--quantize",
        choices=("none", "int8", "fp16"),
        default="int8",
        help="served bundles' precision (int8)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of training and of the held-out choice (default 0)"
    )
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument(
        "--epochs", type=float, help="epochs of every training (default: the recipe's, then update's)"
    )
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="train nothing: fit each kept bundle's rejection again and measure the finished rounds again "
        "with this version's phrase-board rules",
    )


def _run_rollback(args: argparse.Namespace) -> int:
    from resonance.runtime.versions import rollback, versions

    if args.list:
        found = versions(args.bundle)
        for version in found:
            print(version.describe())
        print(f"{len(found)} earlier bundle(s) of {args.bundle}", file=sys.stderr)
        return 0
    chosen = rollback(args.bundle, args.to)
    print(f"serving {chosen.name} again at {args.bundle}; the bundle served until now is kept in the history")
    return 0


def _run_update(args: argparse.Namespace) -> int:
    from resonance.update.update import UpdateOptions, as_json, update

    result = update(
        UpdateOptions(
            adapter=args.adapter,
            data=args.data,
            new=args.new,
            out=args.out,
            bundle=args.bundle,
            start=args.start,
            epochs=args.epochs,
            held_out=args.held_out,
            seed=args.seed,
            deploy=not args.judge_only,
            threads=args.threads,
            device=args.device,
            decoding=device_config_from_args(args).decoding,
        )
    )
    print(json.dumps(as_json(result), ensure_ascii=False, indent=2) if args.json else result.summary())
    return 0 if result.judgement.deploy else 3  # 3: judged worse (with --judge-only: would not deploy)


def _run_loop(args: argparse.Namespace) -> int:
    from resonance.update.loop import LoopOptions, remeasure, run_loop

    for name in ("initial", "per_round", "rounds"):
        if getattr(args, name) < 1:
            from resonance.errors import ResonanceError

            raise ResonanceError(
                f"--{name.replace('_', '-')} must be at least 1", "use e.g. the defaults 30, 20, 4"
            )
    options = LoopOptions(
        first=args.first,
        second=args.second,
        out=args.out,
        base_model=args.base_model,
        initial=args.initial,
        per_round=args.per_round,
        rounds=args.rounds,
        start=args.start,
        quantize=args.quantize,
        seed=args.seed,
        threads=args.threads,
        epochs=args.epochs,
    )
    progress = lambda line: print(line, flush=True)  # noqa: E731
    if args.remeasure:
        remeasure(options, recalibrate=True, progress=progress)
    else:
        run_loop(options, progress=progress)
    print((args.out / "loop.md").read_text(encoding="utf-8"))
    return 0
