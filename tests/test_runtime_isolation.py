"""The runtime must run on a device without torch, and on Python 3.8 (JetPack 5)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from helpers import tone

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_MODULES = ("bundle", "features", "tokenizer", "decoding", "sessions", "transcriber")
HEAVY = ("torch", "transformers", "peft", "optimum")

# A fresh interpreter with a meta-path finder that refuses the training stack (as on a device where it is not
# installed, although this venv has it): import what `resonance serve` / `resonance transcribe` import, and with a
# bundle really transcribe three ways: the public API, the CLI, and the server's app. Every refused import is
# recorded with the module that asked for it, so a guarded `try: import torch` is caught too.
PROBE = """
import importlib, json, os, sys
HEAVY = set(sys.argv[1].split(","))
IMPORTLIB = os.path.dirname(importlib.__file__)
attempts = []

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in HEAVY:
            return None
        frame = sys._getframe(1)
        while frame and frame.f_code.co_filename.startswith(("<frozen", IMPORTLIB)):
            frame = frame.f_back
        attempts.append([name, frame.f_globals.get("__name__") if frame else None])
        raise ImportError(f"{name} is blocked: the runtime must work without it")

sys.meta_path.insert(0, Blocker())

import numpy as np
import resonance.cli
from resonance.runtime import bundle, decoding, features, sessions, tokenizer, transcriber
from resonance.runtime import device_config, listen, models, server
resonance.cli.build_parser()  # registers every layer's subcommands, train and export included

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)

result = {"modules": loaded()}
if len(sys.argv) > 2:  # and really transcribe, which imports onnxruntime, tokenizers, opencc
    from resonance.runtime import Transcriber
    bundle_dir, clip = sys.argv[2], sys.argv[3]
    t = Transcriber(bundle_dir)
    result["tokens"] = len(t.transcribe(np.sin(np.arange(16000) / 5.0).astype(np.float32) * 0.3).tokens)
    result["text"] = t.transcribe(clip).text
    result["cli_exit"] = resonance.cli.main(["transcribe", "--bundle", bundle_dir, "--json", clip])
    config = device_config.load_device_config("pc-cpu")
    registry = models.ModelRegistry(os.path.dirname(bundle_dir), config)
    client = server.create_app(registry, config).test_client()
    with open(clip, "rb") as fh:
        reply = client.post("/transcribe", data={"file": (fh, "clip.wav")}, content_type="multipart/form-data")
    result["server"] = [reply.status_code, reply.get_json()]
    result["modules"] = loaded()
result["attempts"] = attempts
print(json.dumps(result))
"""


def _probe(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _asked_by_resonance(result: dict) -> list:
    return [(name, by) for name, by in result["attempts"] if by is None or by.split(".")[0] == "resonance"]


def test_runtime_imports_no_training_stack():
    result = _probe()
    assert result["modules"] == []
    assert _asked_by_resonance(result) == []


def test_transcribing_works_with_the_training_stack_blocked(tiny_bundle, tmp_path):
    # The export ran in this (pytest) process; the probe is a fresh interpreter that only loads the bundle.
    clip = tmp_path / "clip.wav"
    sf.write(clip, tone(1.0), 16000, subtype="PCM_16")
    result = _probe(str(tiny_bundle), str(clip))
    assert result["tokens"] > 0
    assert isinstance(result["text"], str)
    assert result["cli_exit"] == 0
    status, reply = result["server"]
    assert status == 200, reply
    assert reply["patient"] == tiny_bundle.name and isinstance(reply["text"], str)
    assert result["modules"] == []
    assert _asked_by_resonance(result) == []


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
