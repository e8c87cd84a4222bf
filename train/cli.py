"""Subcommands of this layer (registration only: heavy imports happen when a command runs)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    pass
