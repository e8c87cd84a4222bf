"""The caregiver's web page, in a real headless Chromium against a real `resonance serve`.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out), so no
webdriver or websocket package is needed. Its fake microphone plays a demo clip: the page records it, encodes
16 kHz WAV in JS and shows the server's text, which must equal what `Transcriber` returns for that WAV.
Needs Debian's chromium (`apt-get install -y chromium chromium-driver`); skipped without it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import requests
import soundfile as sf
from helpers import DEMO_DATA, Server, stop_process, tone, wav, write_config

STATIC = Path(__file__).resolve().parents[1] / "runtime" / "static"
SCREENSHOT = Path(tempfile.gettempdir()) / "webpage.png"
SPEECH_CLIP = DEMO_DATA / "take1" / "audio" / "0000_我想喝水.wav"
INSECURE_HOST = "resonance.test"  # mapped to 127.0.0.1 in Chromium: a plain-http LAN-like origin


def chromium_path() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# -- a minimal DevTools-protocol client over Chromium's pipe ----------------------------------------------------


class Browser:
    """Headless Chromium with one page; ``call`` sends a CDP command to the page and returns its result."""

    def __init__(self, binary: str, *flags: str, timeout: float = 60.0) -> None:
        self.profile = tempfile.mkdtemp(prefix="resonance-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Move the child's ends above 9 so that dup2 onto 3 and 4 cannot clobber one with the other.
        child_in = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def pipes_to_3_and_4() -> None:  # runs in the child, before exec; dup2 clears close-on-exec
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            "--window-size=720,1400",
            *flags,
            "about:blank",
        ]
        self.log = open(os.path.join(self.profile, "chromium.log"), "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            cmd,
            preexec_fn=pipes_to_3_and_4,
            close_fds=False,  # fds 3 and 4 must survive; Python's own fds are close-on-exec anyway
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        os.close(child_in)
        os.close(child_out)
        self._next_id = 0
        self._replies: Dict[int, dict] = {}
        self.events: List[dict] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = ""
        page = next(
            t for t in self.call("Target.getTargets", browser=True)["targetInfos"] if t["type"] == "page"
        )
        self.session = self.call(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, browser=True
        )["sessionId"]
        for domain in ("Page", "Runtime", "DOM"):
            self.call(f"{domain}.enable")

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._replies[-1] = {"error": {"message": "chromium closed the pipe"}}
                    self._cond.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, _, buffer = buffer.partition(b"\0")
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def call(
        self, method: str, params: Optional[dict] = None, browser: bool = False, timeout: float = 60.0
    ) -> Any:
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message: Dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if not browser:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._replies and -1 not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no reply to {method} within {timeout} s")
                self._cond.wait(left)
            reply = self._replies.pop(ident, None) or self._replies[-1]
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply["result"]

    def eval(self, expression: str, timeout: float = 60.0) -> Any:
        """Evaluate JS in the page (promises awaited) and return its value."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"JS error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && window.Resonance !== undefined")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}; page says: {self.status()}")

    def status(self) -> str:
        return self.eval("document.body.dataset.state + ': ' + document.getElementById('status').textContent")

    def centre_of(self, selector: str) -> tuple:
        box = self.eval(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        return box[0], box[1]

    def hold(self, selector: str, seconds: float) -> None:
        """Press the mouse on ``selector``, keep it down ``seconds``, release: a real (trusted) gesture."""
        x, y = self.centre_of(selector)
        common = {"x": x, "y": y, "button": "left", "clickCount": 1}
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        self.call("Input.dispatchMouseEvent", {"type": "mousePressed", "buttons": 1, **common})
        time.sleep(seconds)
        self.call("Input.dispatchMouseEvent", {"type": "mouseReleased", "buttons": 0, **common})

    def set_files(self, selector: str, *paths: Path) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.call("DOM.setFileInputFiles", {"nodeId": node, "files": [str(p) for p in paths]})

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def js_errors(self) -> List[str]:
        errors = []
        for event in self.events:
            if event.get("method") == "Runtime.exceptionThrown":
                errors.append(json.dumps(event["params"]["exceptionDetails"])[:500])
            elif event.get("method") == "Runtime.consoleAPICalled" and event["params"]["type"] == "error":
                errors.append(json.dumps(event["params"]["args"])[:500])
        return errors

    def close(self) -> None:
        stop_process(self.proc)
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):  # already closed
                os.close(fd)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("webpage")
    models = root / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    config = write_config(root / "test.yaml")
    return root, models, config


@pytest.fixture(scope="module")
def server(setup):
    _, models, config = setup
    srv = Server(models, config, "--allow-host", INSECURE_HOST)  # the LAN-like name the browser maps
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def transcriber(setup):
    """What the server runs for p1: the same factory and device config, in this process."""
    from resonance.runtime.device_config import load_device_config
    from resonance.runtime.models import default_transcriber_factory

    _, models, config = setup
    return default_transcriber_factory(models / "p1", load_device_config(config))


@pytest.fixture(scope="module")
def fake_mic(setup) -> Path:
    """The fake microphone's input: real speech (a demo clip) after a little silence, as a 16-bit WAV."""
    speech, rate = sf.read(SPEECH_CLIP, dtype="float32")
    clip = np.concatenate([np.zeros(rate // 4, np.float32), speech])
    path = setup[0] / "fake-mic.wav"
    sf.write(path, clip, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(fake_mic):
    binary = chromium_path()
    if binary is None:
        pytest.skip("chromium not installed (apt-get install -y chromium chromium-driver)")
    b = Browser(
        binary,
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}",
        "--autoplay-policy=no-user-gesture-required",
        f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1",
    )
    yield b
    b.close()


def shown_text(browser: Browser) -> str:
    return browser.eval("document.getElementById('text').dataset.text")


def best_lag_correlation(recorded: np.ndarray, source: np.ndarray) -> float:
    """Max normalised cross-correlation of ``recorded`` against ``source`` looped (the fake mic loops it)."""
    looped = np.tile(source, int(np.ceil(len(recorded) / len(source))) + 2)
    n = len(looped) + len(recorded)
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(looped, size) * np.conj(np.fft.rfft(recorded, size))
    corr = np.fft.irfft(spectrum, size)[: len(looped) - len(recorded)]
    energy = np.concatenate([[0.0], np.cumsum(looped.astype(np.float64) ** 2)])
    window = (energy[len(recorded) :] - energy[: -len(recorded)])[: len(corr)]  # sliding sum of squares
    norm = np.sqrt(window * np.sum(recorded**2)) + 1e-12
    return float(np.max(corr / norm))


# -- without a browser: what the server sends ----------------------------------------------------------------------


def test_page_and_its_three_files_are_served_with_nothing_from_elsewhere(server):
    page = server.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert sorted(p.name for p in STATIC.iterdir()) == ["app.js", "index.html", "style.css"]
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(referenced) == ["/static/app.js", "/static/style.css", "data:,"]
    for name in ("app.js", "style.css"):
        response = server.get(f"/static/{name}")
        assert response.status_code == 200
        assert response.content == (STATIC / name).read_bytes()
    for path in STATIC.iterdir():  # offline: no CDN, no web font, no remote anything
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", path.read_text(encoding="utf-8")), path
    assert server.get("/static/../server.py").status_code == 404
    assert server.get("/static/%2e%2e/server.py").status_code == 404
    assert server.get("/static/nothing.js").status_code == 404


def test_page_is_open_but_the_api_is_not_when_auth_is_on(setup, tmp_path):
    _, models, config = setup
    srv = Server(models, config, "--auth", "--token-file", str(tmp_path / "token"))
    try:
        assert srv.get("/").status_code == 200
        assert srv.get("/static/app.js").status_code == 200
        assert srv.get("/patients").status_code == 401
    finally:
        srv.stop()


# -- in Chromium -------------------------------------------------------------------------------------------------


def test_hold_to_record_shows_what_the_transcriber_returns(browser, server, transcriber, fake_mic):
    browser.open(server.base + "/")
    assert browser.eval("window.isSecureContext") is True  # 127.0.0.1 counts as secure: the mic is allowed
    browser.wait_for("document.body.dataset.state === 'idle'")
    assert browser.eval("document.getElementById('patient').value") == "p1"
    assert browser.eval("document.getElementById('insecure').hidden") is True
    browser.hold("#record", 2.5)
    browser.wait_for("document.body.dataset.state === 'done'", timeout=120)
    sent = base64.b64decode(browser.eval("Resonance.lastWavBase64()"))
    info = sf.info(io.BytesIO(sent))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 1.0 < info.duration < 3.5, info.duration  # about as long as the button was held
    recorded, _ = sf.read(io.BytesIO(sent), dtype="float32")
    source, _ = sf.read(fake_mic, dtype="float32")
    # The page heard the fake microphone's speech, resampled correctly (48 kHz capture -> 16 kHz WAV).
    similarity = best_lag_correlation(recorded, source)
    assert similarity > 0.9, similarity
    expected = transcriber.transcribe(sent).text
    assert shown_text(browser) == expected
    reply = browser.eval("Resonance.state.lastReply")
    assert reply["text"] == expected and reply["patient"] == "p1"
    assert browser.eval("document.getElementById('phrase-box').hidden") is True  # no phrase fields yet
    browser.screenshot(SCREENSHOT)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser.js_errors() == []
    print(f"recorded {info.duration:.2f} s (similarity {similarity:.3f}); shown {expected!r}; {SCREENSHOT}")


def test_a_tap_is_too_short_and_sends_nothing(browser, server):
    browser.open(server.base + "/")
    browser.wait_for("document.body.dataset.state === 'idle'")
    browser.hold("#record", 0.05)
    browser.wait_for(
        "document.body.dataset.state === 'idle' && /Too short/.test(document.getElementById('status').textContent)"
    )
    assert browser.eval("Resonance.state.lastWav") is None


def test_upload_fallback_on_a_plain_http_lan_address(browser, server, transcriber, tmp_path):
    port = server.base.rsplit(":", 1)[1]
    browser.open(f"http://{INSECURE_HOST}:{port}/")
    assert browser.eval("window.isSecureContext") is False
    browser.wait_for("document.body.dataset.state === 'idle'")
    assert browser.eval("document.getElementById('insecure').hidden") is False  # says why there is no mic
    assert "https" in browser.eval("document.getElementById('insecure').textContent")
    assert browser.eval("document.getElementById('record').disabled") is True
    browser.screenshot(SCREENSHOT.with_name("webpage-insecure.png"))
    clip = tmp_path / "upload.wav"
    clip.write_bytes(SPEECH_CLIP.read_bytes())
    browser.set_files("#upload", clip)
    browser.wait_for("document.body.dataset.state === 'done'", timeout=120)
    assert shown_text(browser) == transcriber.transcribe(clip).text
    base64_sent = browser.eval("Resonance.lastWavBase64()")
    assert base64.b64decode(base64_sent) == clip.read_bytes()  # a WAV goes to the server as it is


def test_wav_encoder_and_resampler_output_through_the_server(browser, server, transcriber):
    browser.open(server.base + "/")
    # 1 s at 48 kHz: 440 Hz speech-band tone plus a 10 kHz tone that 16 kHz audio cannot hold.
    script = """(() => {
        const n = 48000, x = new Float32Array(n);
        for (let i = 0; i < n; i++) x[i] = 0.5 * Math.sin(2 * Math.PI * 440 * i / 48000);
        const wanted = Resonance.resample(x, 48000, 16000);
        for (let i = 0; i < n; i++) x[i] += 0.3 * Math.sin(2 * Math.PI * 10000 * i / 48000);
        const mixed = Resonance.resample(x, 48000, 16000);
        let err = 0;
        for (let i = 200; i < wanted.length - 200; i++) err = Math.max(err, Math.abs(mixed[i] - wanted[i]));
        const bytes = new Uint8Array(Resonance.encodeWav(mixed, 16000));
        let s = ''; for (const b of bytes) s += String.fromCharCode(b);
        return {alias: err, wav: btoa(s)};
    })()"""
    out = browser.eval(script)
    assert out["alias"] < 0.01  # the 10 kHz tone is filtered out, not folded down to 6 kHz
    data = base64.b64decode(out["wav"])
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    info = sf.info(io.BytesIO(data))
    assert (rate, info.channels, info.subtype, len(samples)) == (16000, 1, "PCM_16", 16000)
    spectrum = np.abs(np.fft.rfft(samples[200:-200] * np.hanning(len(samples) - 400)))
    peak_hz = np.argmax(spectrum) * rate / (len(samples) - 400)
    assert abs(peak_hz - 440) < 3
    assert np.max(np.abs(samples[200:-200])) == pytest.approx(0.5, abs=0.02)
    response = server.post(files={"file": ("page.wav", data, "audio/wav")})
    assert response.status_code == 200, response.text
    assert response.json()["duration_s"] == pytest.approx(1.0, abs=0.001)
    assert response.json()["text"] == transcriber.transcribe(data).text


def test_encoder_clips_and_silences_bad_samples(browser, server):
    browser.open(server.base + "/")
    values = browser.eval(
        "Array.from(new Int16Array(Resonance.encodeWav(new Float32Array([0, 1, -1, 2, -2, NaN, 0.5]), 16000), 44))"
    )
    assert values == [0, 32767, -32768, 32767, -32768, 0, 16384]


def test_phrase_slot_shows_the_best_phrase_and_its_confidence(browser, server):
    browser.open(server.base + "/")
    best = browser.eval(
        "Resonance.bestPhrase({text: 'x', phrases: [{text: '我想喝水', confidence: 0.42},"
        " {text: '我要上厕所', confidence: 0.87}, {text: '开灯', score: 0.5}]})"
    )
    assert best == {"text": "我要上厕所", "confidence": 0.87}
    assert browser.eval("Resonance.bestPhrase({text: 'x', phrase: '开灯', confidence: 0.9})") == {
        "text": "开灯",
        "confidence": 0.9,
    }
    assert browser.eval("Resonance.bestPhrase({text: 'x'})") is None
    # The server's own fields (mode=both): phrase + phrase_confidence, and "none of these" hides the slot.
    reply = "{text: 'x', phrase: '开灯', phrase_confidence: 0.8, phrases: [{text: '开灯', confidence: 0.8}]}"
    assert browser.eval(f"Resonance.bestPhrase({reply})") == {"text": "开灯", "confidence": 0.8}
    rejected = "{text: 'x', phrase: null, phrase_rejected: true, phrases: [{text: '开灯', confidence: 0.3}]}"
    assert browser.eval(f"Resonance.bestPhrase({rejected})") is None
    browser.eval("Resonance.showResult({text: '我相喝水', phrases: [{text: '我想喝水', confidence: 0.91}]})")
    assert browser.eval("document.getElementById('phrase-box').hidden") is False
    assert browser.eval("document.getElementById('phrase').textContent") == "我想喝水"
    assert "91%" in browser.eval("document.getElementById('phrase-confidence').textContent")
    browser.screenshot(SCREENSHOT.with_name("webpage-phrase.png"))
    browser.eval("Resonance.showResult({text: ''})")
    assert browser.eval("document.getElementById('phrase-box').hidden") is True
    assert "no words" in browser.eval("document.getElementById('text').textContent")


def test_token_is_asked_once_kept_and_sent(browser, setup, tmp_path):
    _, models, config = setup
    token_file = tmp_path / "token"
    srv = Server(models, config, "--auth", "--token-file", str(token_file))
    try:
        token = token_file.read_text(encoding="utf-8").strip()
        browser.open(srv.base + "/")
        browser.wait_for("document.body.dataset.state === 'token'")
        assert browser.eval("document.getElementById('token-box').hidden") is False
        browser.eval("document.getElementById('token').value = 'wrong-token'")
        browser.eval("document.getElementById('token-save').click()")
        browser.wait_for("!document.getElementById('token-error').hidden")  # asked again, says why
        browser.eval(f"document.getElementById('token').value = {json.dumps(token)}")
        browser.eval("document.getElementById('token-save').click()")
        browser.wait_for("document.body.dataset.state === 'idle'")
        assert browser.eval("document.getElementById('patient').value") == "p1"
        browser.open(srv.base + "/")  # a new visit: the token is remembered (localStorage), not asked again
        browser.wait_for("document.body.dataset.state === 'idle'")
        assert browser.eval("document.getElementById('token-box').hidden") is True
        clip = tmp_path / "c.wav"
        clip.write_bytes(wav(tone(1.0)))
        browser.set_files("#upload", clip)
        browser.wait_for("document.body.dataset.state === 'done'", timeout=120)
        assert browser.eval("Resonance.state.lastReply.patient") == "p1"
    finally:
        srv.stop()
    assert re.search(r"POST /transcribe 200", srv.output)
    assert re.search(r"GET /patients 401", srv.output)


def test_no_request_failed_behind_the_pages_back(server, browser):
    assert server.alive, server.output
    assert "Traceback" not in server.output
    assert browser.js_errors() == [], browser.js_errors()
    assert requests.get(server.base + "/health", timeout=10).json()["status"] == "ok"
