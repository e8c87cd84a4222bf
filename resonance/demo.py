"""`resonance demo`: the whole chain on the built-in clips."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    pass
