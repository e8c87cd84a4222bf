"""The code style is part of the build: `make lint` (ruff check + ruff format --check) must pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> str:
    found = Path(sys.executable).with_name("ruff")  # the venv's pinned ruff, as `make lint` uses
    if found.exists():
        return str(found)
    if shutil.which("ruff"):
        return shutil.which("ruff")
    pytest.skip("ruff is not installed (it comes with the [dev] extra)")


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
    proc = subprocess.run([_ruff(), *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
