"""What every layer's command-line registration shares: commands and groups whose --help ends with examples.

A leaf module (it imports nothing of the package), so a layer's ``cli.py`` can use it without importing the
top-level ``resonance.cli`` that imports every layer. Python-3.8-clean: the runtime's CLI uses it on a Jetson.
"""

from __future__ import annotations

import argparse
from typing import Callable

Run = Callable[[argparse.Namespace], int]


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, examples: str, run: Run
) -> argparse.ArgumentParser:
    """Add a subcommand whose --help ends with worked examples; ``run(args)`` is what it does."""
    parser = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def add_group(
    sub: argparse._SubParsersAction, name: str, help: str, description: str, examples: str
) -> argparse._SubParsersAction:
    """Add a command group (``resonance data …``); the layers add its actions to the returned subparsers.

    The group alone prints its help (actions and examples) and exits 1, like ``resonance`` alone.
    """
    parser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=lambda args: print_help(parser))
    return parser.add_subparsers(dest=f"{name}_command", metavar="<action>")


def print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1
