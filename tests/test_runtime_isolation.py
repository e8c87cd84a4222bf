"""The runtime must run on a device without torch, and on Python 3.8 (JetPack 5)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_MODULES = ("bundle", "features", "tokenizer", "decoding", "sessions", "transcriber")
HEAVY = ("torch", "transformers", "peft", "optimum")

PROBE = """
import json, sys
import numpy as np
from resonance.runtime import bundle, decoding, features, sessions, tokenizer, transcriber
HEAVY = set(sys.argv[1].split(","))
def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
result = {"modules": loaded()}
if len(sys.argv) > 2:  # and really transcribe, which imports onnxruntime, tokenizers, opencc
    t = transcriber.Transcriber(sys.argv[2])
    result["tokens"] = len(t.transcribe(np.sin(np.arange(16000) / 5.0).astype(np.float32) * 0.3).tokens)
    result["modules"] = loaded()
print(json.dumps(result))
"""


def _probe(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runtime_imports_no_training_stack():
    assert _probe()["modules"] == []


def test_transcribing_imports_no_training_stack(tiny_bundle):
    # The export ran in this (pytest) process; the probe is a fresh interpreter that only loads the bundle.
    result = _probe(str(tiny_bundle))
    assert result["tokens"] > 0
    assert result["modules"] == []


def _py38_files():
    files = sorted((ROOT / "runtime").rglob("*.py")) + sorted((ROOT / "resonance").rglob("*.py"))
    return [f for f in files if ".venv" not in f.parts]


# 3.9+ APIs that parse fine on 3.8 but fail when called there.
_NEWER_ATTRIBUTES = {"removeprefix", "removesuffix", "cache", "is_relative_to", "bit_count"}


@pytest.mark.parametrize("path", _py38_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_and_runtime_are_python38(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path), feature_version=(3, 8))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _NEWER_ATTRIBUTES:
            if node.attr == "cache" and not (
                isinstance(node.value, ast.Name) and node.value.id == "functools"
            ):
                continue
            pytest.fail(f"{path.name}:{node.lineno} uses .{node.attr} (Python 3.9+)")
        is_zip = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "zip"
        if is_zip and any(k.arg == "strict" for k in node.keywords):
            pytest.fail(f"{path.name}:{node.lineno} uses zip(strict=...) (Python 3.10+)")
    annotated = any(
        (isinstance(n, (ast.AnnAssign, ast.arg)) and n.annotation is not None)
        or (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns is not None)
        for n in ast.walk(tree)
    )
    if annotated:
        # `list[int]` / `X | None` in annotations only work on 3.8 when annotations are not evaluated.
        assert "from __future__ import annotations" in source, (
            f"{path.name} needs `from __future__ import annotations`"
        )
