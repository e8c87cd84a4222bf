"""The LAN server as the caregiver's app meets it: a real `resonance serve` process on loopback, real bundles.

The bundle is conftest's session-wide `tiny_bundle`; `Server` and the other helpers are in helpers.py.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import stat
import threading
import time
from typing import List

import numpy as np
import pytest
import requests
import soundfile as sf
from helpers import Server, assert_error, copy_bundle, tone, wav, write_config

# -- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_bundle):
    """p1 (good) beside a corrupt bundle, an incomplete one and an export in progress: only p1 serves."""
    root = tmp_path_factory.mktemp("served")
    models = root / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    broken = copy_bundle(tiny_bundle, models, "broken")
    with open(broken / "encoder.onnx", "r+b") as fh:  # a copy that stopped half way
        fh.truncate(fh.seek(0, 2) // 2)
    incomplete = copy_bundle(tiny_bundle, models, "incomplete")
    (incomplete / "decoder.onnx").unlink()
    shutil.copytree(tiny_bundle, models / ".p2.tmp-123")  # fsutil.atomic_directory's temp folder
    evil = copy_bundle(tiny_bundle, models, "evil")  # finding 7: a manifest value out of range
    manifest = json.loads((evil / "manifest.json").read_text(encoding="utf-8"))
    manifest["audio"]["window_seconds"] = 0
    (evil / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    config = write_config(root / "test.yaml", max_audio_seconds=5, max_upload_mb=3, max_concurrent_requests=2)
    srv = Server(models, config)
    yield srv
    srv.stop()


# -- the good path -----------------------------------------------------------------------------------------------------


def test_health_says_what_is_loaded(server):
    health = server.get("/health").json()
    assert health["status"] == "ok"
    assert health["version"]
    assert health["providers"] == ["CPUExecutionProvider"]
    assert health["patients"] == 1
    assert health["patient_ids"] == ["p1"]  # an open server: everyone on the LAN may see them
    assert health["rss_mb"] > 10


def test_corrupt_and_incomplete_bundles_are_skipped_and_reported(server):
    patients = server.get("/patients").json()
    assert [p["id"] for p in patients] == ["p1"]
    assert re.search(r"SKIPPED broken: .*sha256", server.output)
    assert re.search(r"SKIPPED incomplete: .*decoder", server.output)
    assert re.search(r"SKIPPED evil: .*'audio.window_seconds' must be > 0", server.output)
    assert "p2" not in server.output  # the in-progress export folder is not even looked at


def test_patients_describe_the_bundles(server, tmp_path_factory):
    response = server.get("/patients")
    (p1,) = response.json()
    assert p1["base_model"] and p1["language"] and p1["created"]
    # Finding 9: the tiny bundle's base model is a local folder; its absolute path is nobody's business.
    assert not p1["base_model"].startswith("/") and str(tmp_path_factory.getbasetemp()) not in response.text
    assert p1["loaded"] is True
    assert p1["precision"] == "fp32"
    assert isinstance(p1["metrics"], dict)
    assert isinstance(p1["n_phrases"], int)


def test_transcribe_the_guides_contract(server):
    response = server.post(files={"file": ("clip.wav", wav(tone(1.0)), "audio/wav")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"text", "patient", "duration_s", "latency_ms"} <= set(body)  # the guide's fields, always
    assert isinstance(body["text"], str)
    assert body["patient"] == "p1"
    assert body["duration_s"] == pytest.approx(1.0, abs=0.01)
    assert body["latency_ms"] > 0
    named = server.post(files={"file": ("clip.wav", wav(tone(1.0)), "audio/wav")}, data={"patient": "p1"})
    assert named.status_code == 200
    assert named.json()["text"] == body["text"]  # greedy decoding is deterministic


def test_logs_carry_the_transcript_length_not_the_transcript(server):
    text = ""
    for freq in (180.0, 330.0, 520.0):  # a random model: find a clip whose transcript is long enough to spot
        response = server.post(files={"file": ("c.wav", wav(tone(2.0, freq=freq)), "audio/wav")})
        text = response.json()["text"]
        if len(text.strip()) >= 4:
            break
    if len(text.strip()) < 4:
        pytest.skip("the tiny random model produced no transcript long enough to look for in the log")
    time.sleep(0.2)
    assert f"text_len={len(text)}" in server.output
    assert text.strip() not in server.output


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json"])
def test_openai_compatible_endpoint(server, fmt):
    response = server.post(
        "/v1/audio/transcriptions",
        files={"file": ("clip.wav", wav(tone(1.0)), "audio/wav")},
        data={"model": "whisper-1", "response_format": fmt, "language": "zh"},
    )
    assert response.status_code == 200, response.text
    if fmt == "text":
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.text.endswith("\n")
        return
    body = response.json()
    assert isinstance(body["text"], str)
    if fmt == "verbose_json":
        assert body["task"] == "transcribe"
        assert body["duration"] == pytest.approx(1.0, abs=0.01)
        assert body["language"]
        (segment,) = body["segments"]
        assert segment["text"] == body["text"]
        assert segment["end"] == pytest.approx(1.0, abs=0.01)


def test_openai_model_names_the_patient(server):
    clip = {"file": ("clip.wav", wav(tone(1.0)), "audio/wav")}
    assert server.post("/v1/audio/transcriptions", files=clip, data={"model": "p1"}).status_code == 200
    assert server.post("/v1/audio/transcriptions", files=clip).status_code == 200  # no model: the only one
    assert_error(server.post("/v1/audio/transcriptions", files=clip, data={"model": "nobody"}), 404)
    bad = server.post("/v1/audio/transcriptions", files=clip, data={"response_format": "xml"})
    assert_error(bad, 400, "unsupported_response_format")


# -- the bad-input matrix ------------------------------------------------------------------------------------------


def _samples(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    mono = tone(seconds, rate=rate)
    return np.stack([mono, mono * 0.5], axis=1) if channels == 2 else mono


def _nan_wav() -> bytes:
    samples = _samples(0.5)
    samples[100:110] = np.nan
    return wav(samples, subtype="FLOAT")


def _inf_wav() -> bytes:
    samples = _samples(0.5)
    samples[200] = np.inf
    samples[300] = -np.inf
    return wav(samples, subtype="FLOAT")


def _truncated_data() -> bytes:
    data = wav(_samples(1.0))
    return data[: len(data) // 2]  # header promises 1 s, half of it arrived


def _absurd_rate_wav() -> bytes:
    data = bytearray(wav(_samples(1.0)))
    data[24:28] = (2**31 - 1).to_bytes(4, "little")  # the fmt chunk's sample rate
    return bytes(data)


def _encoded(samples: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format=fmt)
    return buf.getvalue()


UPLOADS = {
    # case: (file bytes, expected status, expected error code or None for 200)
    "8-bit WAV": (lambda: wav(_samples(1.0), subtype="PCM_U8"), 200, None),
    "24-bit WAV": (lambda: wav(_samples(1.0), subtype="PCM_24"), 200, None),
    "float WAV": (lambda: wav(_samples(1.0), subtype="FLOAT"), 200, None),
    "44.1 kHz stereo": (lambda: wav(_samples(1.0, 44100, 2), 44100), 200, None),
    "48 kHz stereo": (lambda: wav(_samples(1.0, 48000, 2), 48000), 200, None),
    "0.05 s audio": (lambda: wav(_samples(0.05)), 200, None),
    "0 s audio (a 44-byte header-only WAV)": (lambda: wav(np.zeros(0, np.float32)), 400, "empty_audio"),
    "WAV cut in the data": (_truncated_data, 400, "bad_audio"),  # not a partial transcript of what arrived
    "WAV claiming 2**31-1 Hz": (_absurd_rate_wav, 400, "bad_audio"),
    "WAV cut in the header": (lambda: wav(_samples(1.0))[:30], 400, "bad_audio"),
    "empty file": (lambda: b"", 400, "bad_audio"),
    "random bytes": (lambda: np.random.default_rng(0).bytes(30000), 400, "bad_audio"),
    "PNG renamed .wav": (lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(2000), 400, "bad_audio"),
    "NaN samples": (_nan_wav, 400, "bad_audio"),
    "inf samples": (_inf_wav, 400, "bad_audio"),
    "FLAC": (lambda: _encoded(_samples(1.0), "FLAC"), 200, None),
    "OGG Vorbis": (lambda: _encoded(_samples(1.0), "OGG"), 200, None),
    "longer than max_audio_seconds": (lambda: wav(_samples(6.0)), 413, "audio_too_long"),
    "60 s of 8 kHz 8-bit (small file, long audio)": (
        lambda: wav(_samples(60.0, 8000), 8000, "PCM_U8"),
        413,
        "audio_too_long",
    ),
    "body over max_upload_mb": (lambda: wav(_samples(120.0)), 413, "too_large"),  # 3.8 MB
    "10 min audio (8 kHz 8-bit)": (lambda: wav(_samples(600.0, 8000), 8000, "PCM_U8"), 413, "too_large"),
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_bad_input_matrix_uploads(server, case):
    make, status, code = UPLOADS[case]
    response = server.post(files={"file": ("clip.wav", make(), "audio/wav")})
    if status == 200:
        assert response.status_code == 200, response.text
        assert isinstance(response.json()["text"], str)
    else:
        assert_error(response, status, code)
    print(f"MATRIX {case}: {response.status_code}")


def test_a_body_far_over_the_cap_is_refused_before_it_is_read(server):
    """The gate answers from the Content-Length (a JSON 413 like every other error), and keeps serving."""
    response = server.post(files={"file": ("huge.wav", bytes(8 * 1024 * 1024), "audio/wav")})
    assert_error(response, 413, "too_large")
    assert server.get("/health").status_code == 200


def test_a_decompression_bomb_is_refused_without_decoding_it(server):
    """Finding 1: a ~570 KB M4A that decodes to 20 min of 48 kHz stereo (460 MB of samples) was decoded in
    full before the length check; three at once took the server from 1.7 to 3.9 GB."""
    pytest.importorskip("av", reason="PyAV ([formats]) decodes M4A")
    from resonance.runtime.probe import decompression_bomb
    from resonance.system import peak_rss_mb

    bomb = decompression_bomb(1200.0)
    peak_before = peak_rss_mb(server.proc.pid)
    replies: List[requests.Response] = []
    threads = [
        threading.Thread(
            target=lambda: replies.append(server.post(files={"file": ("bomb.m4a", bomb, "audio/mp4")}))
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for reply in replies:
        error = assert_error(reply, 413, "audio_too_long")
        assert "1200" in error["message"] or "1199" in error["message"]
    assert peak_rss_mb(server.proc.pid) - peak_before < 60  # the server's high-water mark barely moved


def test_bad_requests_matrix(server):
    clip = wav(tone(1.0))
    base = server.base
    cases = {
        "empty body, no content type": (
            requests.post(base + "/transcribe", timeout=30),
            415,
            "unsupported_media_type",
        ),
        "empty multipart body": (
            requests.post(
                base + "/transcribe",
                data=b"",
                headers={"Content-Type": "multipart/form-data; boundary=x"},
                timeout=30,
            ),
            400,
            "missing_file",
        ),
        "no file field": (server.post(files={"patient": (None, "p1")}), 400, "missing_file"),
        "wrong field name": (
            server.post(files={"audio": ("clip.wav", clip, "audio/wav")}),
            400,
            "missing_file",
        ),
        "raw WAV body (not multipart)": (
            server.post(data=clip, headers={"Content-Type": "audio/wav"}),
            415,
            "unsupported_media_type",
        ),
        "urlencoded form": (server.post(data={"file": "abc"}), 415, "unsupported_media_type"),
        "unknown patient": (
            server.post(files={"file": ("c.wav", clip, "audio/wav")}, data={"patient": "nobody"}),
            404,
            "unknown_patient",
        ),
        "traversal patient ../x": (
            server.post(files={"file": ("c.wav", clip, "audio/wav")}, data={"patient": "../x"}),
            400,
            "invalid_patient",
        ),
        "patient of a skipped bundle": (
            server.post(files={"file": ("c.wav", clip, "audio/wav")}, data={"patient": "broken"}),
            404,
            "unknown_patient",
        ),
        "GET /transcribe": (server.get("/transcribe"), 405, None),
        "unknown route": (server.get("/admin"), 404, None),
    }
    for name, (response, status, code) in cases.items():
        error = assert_error(response, status, code)
        print(f"MATRIX {name}: {response.status_code} {error['code']}")
    wrong_field = cases["wrong field name"][0].json()["error"]
    assert "audio" in wrong_field["message"]  # says what it got, so the app developer sees the typo


def test_the_server_survives_every_bad_upload(server):
    """Every refused upload of the matrix, sent here (so this holds whatever order tests run in): the same
    process is still answering, with no traceback in its log."""
    for case, (make, status, code) in UPLOADS.items():
        if status != 200:
            assert_error(server.post(files={"file": (f"{case}.wav", make(), "audio/wav")}), status, code)
    assert server.alive, server.output
    assert server.get("/health").json()["status"] == "ok"
    assert server.post(files={"file": ("clip.wav", wav(tone(1.0)), "audio/wav")}).status_code == 200
    assert "Traceback" not in server.output


# -- auth ------------------------------------------------------------------------------------------------------------


def test_auth_token_made_once_stored_0600_and_required(tmp_path, tiny_bundle):
    models = tmp_path / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    config = write_config(tmp_path / "test.yaml")
    token_file = tmp_path / "config" / "token"
    srv = Server(models, config, "--auth", "--token-file", str(token_file))
    try:
        token = token_file.read_text(encoding="utf-8").strip()
        assert len(token) >= 32
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token not in srv.output  # not into a log (under systemd: the journal) ...
        assert f"cat {token_file}" in srv.output  # ... but where to read it
        clip = {"file": ("clip.wav", wav(tone(1.0)), "audio/wav")}
        health = srv.get("/health").json()
        assert health["patients"] == 1 and "patient_ids" not in health  # open to probe: a count, no ids
        response = srv.post(files=clip)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(srv.post(files=clip, headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(srv.get("/patients"), 401)
        good = {"Authorization": f"Bearer {token}"}
        assert srv.post(files=clip, headers=good).status_code == 200
        assert srv.post("/v1/audio/transcriptions", files=clip, headers=good).status_code == 200
        assert srv.get("/patients", headers=good).json()[0]["id"] == "p1"
        assert srv.get("/health", headers=good).json()["patient_ids"] == ["p1"]
    finally:
        srv.stop()
    again = Server(models, config, "--auth", "--token-file", str(token_file))
    try:
        assert token not in again.output  # shown once only
        assert str(token_file) in again.output
        clip = {"file": ("clip.wav", wav(tone(1.0)), "audio/wav")}
        assert again.post(files=clip, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        again.stop()


# -- concurrency -------------------------------------------------------------------------------------------------------


def test_busy_server_answers_503_with_retry_after(tmp_path, tiny_bundle):
    """One slot, no queueing: of requests sent at the same instant, all but the first get 503 at once."""
    models = tmp_path / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    config = write_config(
        tmp_path / "busy.yaml", max_concurrent_requests=1, queue_timeout_s=0, max_audio_seconds=30
    )
    srv = Server(models, config)
    long_clip = wav(tone(28.0, freq=300.0))
    statuses: List[int] = []
    busy: List[requests.Response] = []
    try:
        for _ in range(5):  # a burst of 6 at a barrier; retried only if the scheduler serialised them all
            barrier = threading.Barrier(6)
            replies: List[requests.Response] = []

            def send(
                barrier: threading.Barrier = barrier, replies: List[requests.Response] = replies
            ) -> None:
                barrier.wait()
                replies.append(srv.post(files={"file": ("long.wav", long_clip, "audio/wav")}))

            threads = [threading.Thread(target=send) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            statuses += [r.status_code for r in replies]
            busy = [r for r in replies if r.status_code == 503]
            if busy:
                break
        assert set(statuses) <= {200, 503}, statuses
        assert 200 in statuses
        assert busy, f"no request was refused as busy: {statuses}"
        assert_error(busy[0], 503, "busy")
        assert int(busy[0].headers["Retry-After"]) >= 1
        assert srv.get("/health").status_code == 200  # health is not behind the transcription slots
    finally:
        srv.stop()


def test_no_usable_bundle_is_a_clear_startup_error(tmp_path, run_cli):
    models = tmp_path / "bundles"
    (models / "p1").mkdir(parents=True)  # a folder without a manifest
    proc = run_cli("serve", "--config", write_config(tmp_path / "c.yaml"), "--models", models, "--port", "0")
    assert proc.returncode == 2
    assert "no usable bundle" in proc.stderr
    with socket.socket() as taken:  # a mistyped folder is said first, not after a port in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        missing = run_cli("serve", "--models", tmp_path / "nope", "--host", "127.0.0.1", "--port", port)
    assert missing.returncode == 2
    assert "models folder not found" in missing.stderr and "in use" not in missing.stderr
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "train_config.json").write_text("{}", encoding="utf-8")  # what `resonance train` leaves
    proc = run_cli("serve", "--config", write_config(tmp_path / "c.yaml"), "--models", adapter, "--port", "0")
    assert proc.returncode == 2
    assert "is an adapter (made by `resonance train`), not a folder of bundles" in proc.stderr
    assert f"resonance export --adapter {adapter} --out bundles/<patient>" in proc.stderr


def test_transcriptions_run_on_a_fixed_pool_of_slot_threads():
    """However many request threads call in, the model only ever runs on `max_concurrent_requests` threads
    (per-thread onnxruntime/malloc buffers are what made the server grow under load)."""
    from resonance.runtime.server import TranscriptionSlots

    slots = TranscriptionSlots(2, timeout=30)
    seen: List[str] = []
    active, peak, lock = [0], [0], threading.Lock()

    def work() -> str:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return threading.current_thread().name

    def request_thread() -> None:
        for _ in range(5):
            seen.append(slots.run(work))

    threads = [threading.Thread(target=request_thread) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 40
    assert len(set(seen)) <= 2 and all(name.startswith("transcribe") for name in seen)
    assert peak[0] == 2


def test_a_caller_that_finds_every_slot_taken_is_told_when_to_retry():
    from resonance.runtime.server import Busy, TranscriptionSlots

    slots = TranscriptionSlots(1, timeout=0)
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(10)
        return "done"

    holder = threading.Thread(target=slots.run, args=(hold,))
    holder.start()
    try:
        assert started.wait(10)
        with pytest.raises(Busy) as busy:
            slots.run(lambda: "never runs")
        assert busy.value.retry_after_s >= 1 and "retry after" in busy.value.hint
    finally:
        release.set()
        holder.join()
    assert slots.run(lambda: "free again") == "free again"
