"""What the server leaves on disk (nothing, unless `--retain DIR`), and what it prints at start (URL, QR code)."""

from __future__ import annotations

import io
import json
import re
import shutil
import stat
import sys
from pathlib import Path
from typing import Set

import numpy as np
import pytest
import soundfile as sf
from helpers import Server, assert_error, decode_terminal_qr, terminal_qr_block, tone, wav, write_config

from resonance.audio import load_audio
from resonance.runtime.retention import Retention
from resonance.runtime.server import qr_text

BLOCKS = set("█▀▄ \n")


@pytest.fixture
def sandbox(tmp_path, tiny_bundle):
    """models + config, and a HOME, XDG config, TMPDIR and working folder of the server's own."""
    models = tmp_path / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    config = write_config(tmp_path / "test.yaml")
    dirs = {name: tmp_path / name for name in ("home", "xdg", "tmp", "work")}
    for folder in dirs.values():
        folder.mkdir()
    env = {
        "HOME": str(dirs["home"]),
        "XDG_CONFIG_HOME": str(dirs["xdg"]),
        "XDG_CACHE_HOME": str(dirs["home"] / ".cache"),
        "TMPDIR": str(dirs["tmp"]),
    }
    return tmp_path, models, config, env, dirs["work"]


def files_under(root: Path) -> Set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def send_some(srv: Server, clip: bytes) -> list:
    replies = [
        srv.post(files={"file": ("a.wav", clip, "audio/wav")}),
        srv.post(files={"file": ("b.wav", clip, "audio/wav")}, data={"patient": "p1"}),
        srv.post(
            "/v1/audio/transcriptions", files={"file": ("c.wav", clip, "audio/wav")}, data={"model": "p1"}
        ),
    ]
    for reply in replies:
        assert reply.status_code == 200, reply.text
    assert_error(srv.post(files={"file": ("bad.wav", b"not audio", "audio/wav")}), 400, "bad_audio")
    return [r.json() for r in replies]


def test_by_default_nothing_is_written_to_disk(sandbox):
    root, models, config, env, work = sandbox
    before = files_under(root)
    srv = Server(models, config, env=env, cwd=work)
    try:
        assert srv.get("/health").json()["retaining"] is False
        send_some(srv, wav(tone(1.5, freq=330.0)))
        assert "not saved to disk" in srv.output
    finally:
        srv.stop()
    assert files_under(root) == before  # no audio, no transcript, no temp file: nothing at all


def test_retain_keeps_each_recording_and_result_private_and_whole(sandbox):
    root, models, config, env, work = sandbox
    keep = root / "kept" / "recordings"  # created by the server, parents too
    clip = wav(tone(1.5, rate=44100, freq=330.0), rate=44100)  # kept as what the model heard: 16 kHz
    srv = Server(models, config, "--retain", str(keep), "--retain-max-mb", "5", env=env, cwd=work)
    try:
        assert srv.get("/health").json()["retaining"] is True
        replies = send_some(srv, clip)
        silent = srv.post(files={"file": ("s.wav", wav(np.zeros(16000, np.float32)), "audio/wav")})
        assert silent.status_code == 200  # transcribed, but not kept (finding 5)
        assert f"under {keep}" in srv.output
    finally:
        srv.stop()
    folder = keep / "p1"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 6, names  # 3 good requests x (wav + json); the bad upload kept nothing
    assert not [n for n in names if n.startswith(".")]  # no temp file left behind
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
    assert sorted(r["endpoint"] for r in records) == [
        "/transcribe",
        "/transcribe",
        "/v1/audio/transcriptions",
    ]
    assert {r["text"] for r in records} == {r["text"] for r in replies}
    expected = load_audio(clip)
    for record in records:
        audio_path = folder / record["audio"]
        assert audio_path.with_suffix(".json").is_file() and audio_path.suffix == ".wav"
        assert record["patient"] == "p1"
        assert record["duration_s"] == pytest.approx(1.5, abs=0.01)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["received"])
        info = sf.info(audio_path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        samples, _ = sf.read(audio_path, dtype="float32")
        assert np.max(np.abs(samples - expected)) < 1e-3  # the audio itself, 16-bit quantised
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_an_unwritable_retain_folder_stops_the_server_at_start(sandbox, run_cli):
    root, models, config, _, _ = sandbox
    blocker = root / "a-file"
    blocker.write_text("x", encoding="utf-8")
    proc = run_cli(
        "serve", "--config", config, "--models", models, "--port", "0", "--retain", blocker / "sub"
    )
    assert proc.returncode == 2
    assert "cannot write recordings to --retain folder" in proc.stderr


def test_a_failed_save_is_counted_and_logged_not_raised(tmp_path, caplog):
    retention = Retention(tmp_path / "keep")
    retention.save("p1", tone(0.5), {"text": "x"})
    (tmp_path / "keep" / "p2").write_text("a file where the patient's folder should be", encoding="utf-8")
    retention.save_or_log("p2", tone(0.5), {"text": "y"})
    assert (retention.saved, retention.failed) == (1, 1)
    assert "could not keep the recording" in caplog.text


def test_retention_keeps_no_silent_clip_and_stops_at_its_quota(tmp_path, caplog):
    """Finding 5: `--retain` had no disk quota and kept silent clips."""
    root = tmp_path / "keep"
    root.mkdir()
    (root / "earlier.wav").write_bytes(bytes(300_000))  # kept by an earlier run: counts against the quota
    retention = Retention(root, max_mb=0.5)
    assert retention.used_bytes == 300_000
    retention.save_or_log("p1", np.zeros(16000, np.float32), {"text": ""})
    retention.save_or_log("p1", 1e-4 * tone(1.0), {"text": ""})  # -80 dBFS: a muted microphone
    assert (retention.saved, retention.skipped_silent) == (0, 2)
    with caplog.at_level("WARNING"):
        for _ in range(8):  # 1 s of 16 kHz 16-bit is 32 KB: six fit in the 200 KB left
            retention.save_or_log("p1", tone(1.0), {"text": "x"})
    assert retention.saved == 6 and retention.skipped_full == 2
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) <= 0.5 * 2**20
    assert caplog.text.count("holds its quota") == 1  # said once, not per request


# -- QR code of the URL at start ----------------------------------------------------------------------------------


def test_qr_code_is_drawn_in_block_characters():
    pytest.importorskip("segno", reason="segno (a base dependency) is not installed")
    text = qr_text("http://192.168.1.20:8000/transcribe")
    assert text is not None
    lines = text.rstrip("\n").split("\n")
    assert set(text) <= BLOCKS
    assert len({len(line) for line in lines}) == 1  # a rectangle
    width = len(lines[0])
    assert 25 + 8 <= width <= 45 + 8  # versions 2-7 plus the 4-module quiet zone on each side
    assert len(lines) == pytest.approx(width / 2, abs=1)  # two modules per character row: square
    assert qr_text("http://192.168.1.21:8000/transcribe") != text


def test_no_qr_code_without_segno_or_a_unicode_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    assert qr_text("http://192.168.1.20:8000/transcribe") is None
    monkeypatch.setitem(sys.modules, "segno", None)  # `import segno` now raises ImportError
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
    assert qr_text("http://192.168.1.20:8000/transcribe") is None


def test_start_prints_the_page_its_qr_code_and_the_api(sandbox):
    pytest.importorskip("segno", reason="segno (a base dependency) is not installed")
    _, models, config, env, work = sandbox
    srv = Server(models, config, env={**env, "PYTHONIOENCODING": "utf-8"}, cwd=work)
    try:
        lines = srv.lines
        start = lines.index(
            f"Caregiver's page (open it on the phone, or scan the QR code with its camera): {srv.base}/"
        )
        drawing = terminal_qr_block(lines[start + 1 :])
        assert len(drawing) >= 15
        assert "\n".join(drawing) + "\n" == qr_text(f"{srv.base}/")
        # A phone's camera reads the page's address in it (not /transcribe, which a browser cannot open).
        assert decode_terminal_qr(drawing) == [f"{srv.base}/"]
        assert f"API base URL for apps: {srv.base}  (POST /transcribe" in srv.output
        assert lines.index(f"  {srv.base}/transcribe") > start  # the app's address, to type in
    finally:
        srv.stop()
