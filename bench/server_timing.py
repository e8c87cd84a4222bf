"""The server end to end: ``resonance serve`` on loopback, ``POST /transcribe`` of a 2 s WAV, alternating with
the same WAV bytes given to an in-process ``Transcriber``, so both see the same machine load."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from resonance import system
from resonance.bench.config import SERVER_START_TIMEOUT_S, SERVER_WAV_SECONDS, BenchConfig, Clip, EngineSpec
from resonance.bench.models import load_manifest
from resonance.bench.report import percentile
from resonance.constants import SAMPLE_RATE
from resonance.errors import ResonanceError

log = logging.getLogger(__name__)


def write_server_wav(clips: Sequence[Clip], path: Path) -> Path:
    """The clip closest to 2 s, cut or padded to exactly 2 s, as 16-bit PCM WAV."""
    from resonance.audio import load_audio
    from resonance.runtime.loadtest import wav_bytes

    clip = min(clips, key=lambda c: abs(c.seconds - SERVER_WAV_SECONDS))
    audio = load_audio(clip.path)
    n = int(SERVER_WAV_SECONDS * SAMPLE_RATE)
    audio = np.pad(audio[:n], (0, max(0, n - audio.size)))
    path.write_bytes(wav_bytes(audio, SAMPLE_RATE))
    return path


def measure_server(spec: EngineSpec, wav: Path, config: BenchConfig, work: Path) -> Dict[str, Any]:
    """`resonance serve` on loopback with the bundle: POST /transcribe of the 2 s WAV vs the same bytes given
    to an in-process Transcriber, alternately, so both see the same machine load."""
    from resonance.runtime.transcriber import Transcriber

    models = work / f"models-{len(list(work.glob('models-*')))}"
    models.mkdir()
    patient = load_manifest(Path(spec.model)).patient  # the server insists: folder name == manifest's patient
    (models / patient).symlink_to(Path(spec.model).resolve(), target_is_directory=True)
    device = _server_config(spec.precision, config.threads, models / "bench-device.yaml")
    log.info("server: %s on loopback ...", spec.label)
    out, err = models / "stdout.txt", models / "stderr.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(config.threads))
    cmd = [sys.executable, "-m", "resonance.cli", "serve", "--config", str(device), "--models", str(models)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--reload-interval", "0", "--log-level", "WARNING"]
    with open(out, "w") as stdout, open(err, "w") as stderr:
        server = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
    try:
        url = _wait_for_url(server, out, err)
        data = wav.read_bytes()
        body, content_type = _upload(data, patient)
        local = Transcriber(spec.model, ("CPUExecutionProvider",), config.threads)
        _post(url, body, content_type)  # warm-up of both sides
        local.transcribe(data)
        http_ms, local_ms, reported_ms = [], [], []
        for _ in range(config.server_requests):
            t0 = time.perf_counter()
            reply = _post(url, body, content_type)
            t1 = time.perf_counter()
            local_text = local.transcribe(data).text  # the same bytes: WAV decoding counts on both sides
            t2 = time.perf_counter()
            http_ms.append(round((t1 - t0) * 1000.0, 2))
            local_ms.append(round((t2 - t1) * 1000.0, 2))
            reported_ms.append(float(reply.get("latency_ms", 0.0)))
        peak = system.peak_rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return {
        "label": spec.label,
        "bundle": spec.model,
        "wav_seconds": SERVER_WAV_SECONDS,
        "requests": config.server_requests,
        "http_p50_ms": percentile(http_ms, 50),
        "http_p90_ms": percentile(http_ms, 90),
        "server_reported_p50_ms": percentile(
            reported_ms, 50
        ),  # the server's own clock: request parsed to reply
        "in_process_p50_ms": percentile(local_ms, 50),
        # median of the paired differences: robust to load that changes between rounds
        "overhead_ms": percentile([h - loc for h, loc in zip(http_ms, local_ms)], 50),
        "server_peak_rss_mb": peak,
        "text": reply.get("text", ""),
        "in_process_text": local_text,
        "http_ms": http_ms,
        "in_process_ms": local_ms,
    }


def _server_config(precision: str, threads: int, path: Path) -> Path:
    """pc-cpu with the bench's thread count and one request at a time (JSON is valid YAML)."""
    from resonance.runtime.device_config import load_device_config

    base = load_device_config("pc-cpu")
    values = {k: v for k, v in asdict(base).items() if k != "source"}
    values.update(
        name="bench-loopback",
        description="resonance bench: loopback, one request at a time",
        providers=["CPUExecutionProvider"],
        precision=precision,
        intra_op_threads=threads,
        max_concurrent_requests=1,
        queue_timeout_s=60.0,
        host="127.0.0.1",
    )
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def _wait_for_url(server: subprocess.Popen, out: Path, err: Path) -> str:
    """The /transcribe URL the server prints once its bundles are loaded (--port 0: any free port)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip().startswith("http://127.0.0.1:") and line.strip().endswith("/transcribe"):
                return line.strip()
        if server.poll() is not None:
            raise ResonanceError(
                f"`resonance serve` exited with status {server.returncode} before serving:\n"
                + err.read_text(encoding="utf-8", errors="replace")[-2000:],
                "run the same `resonance serve` command by hand to see why",
            )
        time.sleep(0.2)
    raise ResonanceError(
        f"`resonance serve` printed no URL within {SERVER_START_TIMEOUT_S} s", "check the machine's load"
    )


def _upload(wav: bytes, patient: str) -> Tuple[bytes, str]:
    from resonance.runtime.loadtest import multipart

    return multipart({"patient": patient}, {"file": ("phrase.wav", wav, "audio/wav")})


def _post(url: str, body: bytes, content_type: str) -> Dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as reply:  # loopback URL that we started ourselves
        return json.loads(reply.read().decode("utf-8"))
