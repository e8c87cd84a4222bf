"""Helpers the test modules share: paths, generated audio, device configs, a real server process.

Plain functions and classes (fixtures live in conftest.py); test modules import them with
``from helpers import ...`` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import numpy as np
import requests
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER_FILE = FIXTURES / "whisper-tokenizer.json"
DEMO_DATA = ROOT / "resonance" / "demo_data"
PACKAGED_CONFIGS = ROOT / "device_configs"
ERROR_KEYS = {"message", "hint", "code"}


# -- audio --------------------------------------------------------------------------------------------------------


def tone(seconds: float = 1.0, rate: int = 16000, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


# -- processes ----------------------------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """Terminate a child process, killing it if it does not exit within ``grace_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- bundles, device configs and a real server --------------------------------------------------------------------


def copy_bundle(bundle: Path, models: Path, patient: str) -> Path:
    """Copy ``bundle`` to ``models/patient`` with the manifest's patient id changed to match."""
    dst = models / patient
    shutil.copytree(bundle, dst)
    manifest = json.loads((dst / "manifest.json").read_text(encoding="utf-8"))
    manifest["patient"] = patient
    (dst / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return dst


def write_config(path: Path, **changes) -> Path:
    """A device config file: pc-cpu with ``changes`` (fp32 and 1 thread suit the tiny test bundle; greedy too:
    a random model decodes to its token budget, and 4 beams of it only slow the server tests down, while beam
    search, the default, has tests of its own in test_runtime_transcriber.py and test_export.py)."""
    data = yaml.safe_load((PACKAGED_CONFIGS / "pc-cpu.yaml").read_text(encoding="utf-8"))
    data.update({"name": "test", "precision": "fp32", "intra_op_threads": 1, "host": "127.0.0.1"})
    data["decoding"] = {"beam_size": 1}
    data.update(changes)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class Server:
    """`resonance serve` in a subprocess on 127.0.0.1 and a free port; output collected for assertions.

    With ``--https`` the base URL is https and requests trust the server's local CA (``verify``); a plain-http
    listener beside it (``--http-port``) is ``plain_base``."""

    def __init__(
        self,
        models: Optional[Path],
        config: Optional[Path],
        *extra: str,
        timeout: float = 180.0,
        command: Optional[List[str]] = None,
        env: Optional[dict] = None,
        cwd: Optional[Path] = None,
    ) -> None:
        """``command`` replaces `python -m resonance.cli serve --config C --models M` (e.g. a unit's ExecStart)."""
        if command is None:
            command = [sys.executable, "-m", "resonance.cli", "serve", "--config", str(config)]
            command += ["--models", str(models)]
        cmd = [*command, "--host", "127.0.0.1", "--port", "0", "--reload-interval", "0", *extra]
        env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
        )
        self.lines: List[str] = []
        self.verify: object = True  # requests' verify=: the local CA's certificate once the server says it
        self.plain_base: Optional[str] = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.base = self._wait_for_url(timeout)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"(https?)://127\.0\.0\.1:(\d+)/transcribe", self.output)
            if match and "Ctrl+C" in self.output:
                base = f"{match.group(1)}://127.0.0.1:{match.group(2)}"
                ca = re.search(r"certificate authority of this server: (\S+)", self.output)
                if ca:
                    self.verify = ca.group(1)
                plain = re.search(r"(http://127\.0\.0\.1:\d+)/transcribe +\(plain http", self.output)
                self.plain_base = plain.group(1) if plain else None
                requests.get(base + "/health", timeout=10, verify=self.verify).raise_for_status()
                return base
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output}")
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server did not start within {timeout} s:\n{self.output}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def post(self, path: str = "/transcribe", **kwargs) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return requests.post(self.base + path, timeout=120, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return requests.get(self.base + path, timeout=30, **kwargs)

    def stop(self) -> None:
        stop_process(self.proc)
        self._reader.join(timeout=5)


def assert_error(response: requests.Response, status: int, code: Optional[str] = None) -> dict:
    """A real HTTP status with the JSON error body {"error": {"message", "hint", "code"}}."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= ERROR_KEYS
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


# -- QR codes as `resonance serve` prints them ---------------------------------------------------------------------

HALF_BLOCKS = {
    " ": (0, 0),
    "▀": (1, 0),
    "▄": (0, 1),
    "█": (1, 1),
}  # a character = two modules, top and bottom


def terminal_qr_block(lines: List[str]) -> List[str]:
    """The lines of the first QR code drawn in half blocks in ``lines`` (what `resonance serve` prints)."""
    drawing: List[str] = []
    for line in lines:
        if line and set(line) <= set(HALF_BLOCKS) and len(line) > 20:
            drawing.append(line)
        elif drawing:
            break
    return drawing


def decode_terminal_qr(drawing: List[str]) -> List[str]:
    """What a phone's camera reads in a QR code drawn in half blocks: the texts zxing-cpp decodes from it
    drawn as an image (4 pixels a module), either polarity."""
    zxingcpp = __import__("pytest").importorskip("zxingcpp", reason="zxing-cpp (in [dev]) decodes QR codes")
    rows = []
    for line in drawing:
        rows.append([HALF_BLOCKS[ch][0] for ch in line])
        rows.append([HALF_BLOCKS[ch][1] for ch in line])
    modules = np.array(rows, dtype=np.uint8)
    image = np.kron(255 * (1 - modules), np.ones((4, 4), dtype=np.uint8))  # ink = dark
    image = np.pad(image, 16, constant_values=255)  # a quiet zone whichever colour is the ink
    return [barcode.text for barcode in zxingcpp.read_barcodes(image)]


def random_lora_adapter(base: Path, out: Path, seed: int, **train_config) -> Path:
    """A LoRA adapter as `resonance train` saves it, on the random ``base`` Whisper: r 4 on q/v with a non-zero
    B (so merging changes the model), and a train_config.json of ``train_config`` plus the base model and
    language. torch and peft are imported here, so tests without them never do."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(out)
    made_with = {"base_model": str(base), "language": "zh", "task": "transcribe", **train_config}
    (Path(out) / "train_config.json").write_text(json.dumps(made_with), encoding="utf-8")
    return Path(out)


@contextlib.contextmanager
def front_in_thread(app: Any, ssl_context: Any = None) -> Iterator[int]:
    """The server's listener (runtime/server/listener.py) on a free loopback port, serving the ASGI ``app``
    (over TLS with ``ssl_context``) in a thread; yields the port, stops it after."""
    from resonance.runtime.server import listener

    front = listener.Front([listener.Endpoint("127.0.0.1", 0, ssl_context)])
    thread = threading.Thread(target=front.run, args=(app,), daemon=True)
    thread.start()
    time.sleep(0.5)
    try:
        yield front.ports[0]
    finally:
        front.stop()
        thread.join(15)
