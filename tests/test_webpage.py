"""The caregiver's web page, in a real headless Chromium (phone-sized: 412x915) against a real `resonance serve`.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out), so no
webdriver or websocket package is needed. Its fake microphone plays a demo clip: the page records it, encodes
16 kHz WAV in JS and shows the phrase the server matched first and its free text under it, which must equal
what `Transcriber` returns for that WAV; ✓ / ✗ keep the recording under `serve --collect`.
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
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import soundfile as sf
from helpers import DEMO_DATA, Server, stop_process, tone, wav, write_config

STATIC = Path(__file__).resolve().parents[1] / "runtime" / "static"
SCREENSHOT = Path(tempfile.gettempdir()) / "webpage.png"
SPEECH_CLIP = DEMO_DATA / "take1" / "audio" / "0000_我想喝水.wav"
LAN_HOST = "care.lan"  # the server's name on the home LAN, mapped to 127.0.0.1 in Chromium: https
INSECURE_HOST = "resonance.test"  # mapped to 127.0.0.1 in Chromium too: a plain-http LAN-like origin
PHONE = (412, 915)  # CSS pixels of a common Android phone (Pixel 7 class)
PHRASES = ["我想喝水", "我要上厕所", "开灯", "关灯", "我饿了", "谢谢"]  # p1's phrase board


def chromium_path() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# -- a minimal DevTools-protocol client over Chromium's pipe ----------------------------------------------------


class Browser:
    """Headless Chromium with one page; ``call`` sends a CDP command to the page and returns its result."""

    def __init__(
        self, binary: str, *flags: str, timeout: float = 60.0, env: Optional[Dict[str, str]] = None
    ) -> None:
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
            env={**os.environ, **(env or {})},
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

    def phone(self, width: int = PHONE[0], height: int = PHONE[1]) -> None:
        """Lay the page out as a phone of this size (CSS pixels) would, touch and all."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True}
        self.call("Emulation.setDeviceMetricsOverride", metrics)
        self.call("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 1})

    def on_first_screen(self, selector: str) -> bool:
        """Whether ``selector`` is shown whole inside the viewport without scrolling."""
        return self.eval(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return r.width > 0 && r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; })()"
        )

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        """What the screen shows (a phone's 412x915 by default), or with ``full_page`` the whole page."""
        params = {"format": "png", "captureBeyondViewport": full_page}
        data = self.call("Page.captureScreenshot", params)["data"]
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
    from resonance.runtime.board import edit_board

    root = tmp_path_factory.mktemp("webpage")
    models = root / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    edit_board(models / "p1", add=PHRASES)
    config = write_config(root / "test.yaml")
    return root, models, config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def https_server(setup, *extra: str) -> Server:
    """`resonance serve` as on the LAN: HTTPS with the local CA (one per module: the browser trusts it), the
    LAN-like names allowed, plain http beside it."""
    root, models, config = setup
    flags = [
        "--https",
        "--allow-host",
        LAN_HOST,
        "--allow-host",
        INSECURE_HOST,
        "--http-port",
        str(free_port()),
    ]
    return Server(models, config, *flags, *extra, env={"XDG_CONFIG_HOME": str(root / "xdg")})


def lan(srv: Server) -> str:
    """The server's https address as the phone uses it: by its LAN name."""
    return f"https://{LAN_HOST}:{srv.base.rsplit(':', 1)[1]}"


@pytest.fixture(scope="module")
def server(setup):
    srv = https_server(setup, "--collect", str(setup[0] / "kept"))
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


def trust_in_chromium(ca_file: Path, home: Path) -> List[str]:
    """Make Chromium trust the server's CA as a phone that installed it does: in the NSS database of the HOME
    it runs with (Debian's libnss3-tools has certutil). Without certutil, fall back to ignoring certificate
    errors (the page is still https; test_https.py checks the chain itself)."""
    certutil = shutil.which("certutil")
    if certutil is None:
        return ["--ignore-certificate-errors"]
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [certutil, "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, capture_output=True
    )
    add = [certutil, "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "resonance-test-ca", "-i", str(ca_file)]
    subprocess.run(add, check=True, capture_output=True)
    return []


@pytest.fixture(scope="module")
def browser(fake_mic, server, setup):
    binary = chromium_path()
    if binary is None:
        pytest.skip("chromium not installed (apt-get install -y chromium chromium-driver)")
    home = setup[0] / "chromium-home"
    trust = trust_in_chromium(Path(server.verify), home)
    b = Browser(
        binary,
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}",
        "--autoplay-policy=no-user-gesture-required",
        f"--host-resolver-rules=MAP {LAN_HOST} 127.0.0.1, MAP {INSECURE_HOST} 127.0.0.1",
        *trust,
        env={"HOME": str(home)},
    )
    b.phone()
    yield b
    b.close()


def shown_text(browser: Browser) -> str:
    return browser.eval("document.getElementById('text').dataset.text")


def shown_phrase(browser: Browser) -> str:
    return browser.eval("document.getElementById('phrase').textContent")


def expected_answer(result) -> str:
    """What the page must show first for a TranscriptionResult (app.js answerOf): the matched phrase, the free
    text for a patient without phrases, or 没听清 when the board rejected every phrase."""
    match = result.phrases
    if match is not None and match.best:
        return match.best
    if match is None or match.reason == "no_phrases":
        return result.text or "没听清"
    return "没听清"


def capture_speech(browser: Browser) -> None:
    """Record what the page asks the browser to say (headless Chromium has no voices to really speak)."""
    browser.eval(
        "window.__said = []; window.speechSynthesis.speak = (u) => window.__said.push({text: u.text, lang: u.lang});"
    )


def labels_of(folder: Path) -> List[dict]:
    path = folder / "labels.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


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


def segment_similarity(recorded: np.ndarray, source: np.ndarray, seconds: float = 0.5) -> float:
    """The median best-lag correlation of the recording's sounding half-second pieces with the source.

    Piece by piece: on a loaded machine the browser's audio thread may drop a block, which breaks one
    alignment of the whole recording but not what each piece holds; a wrong resampler spoils every piece.
    """
    size = int(seconds * 16000)
    pieces = [recorded[i : i + size] for i in range(0, len(recorded) - size + 1, size)]
    sounding = [p for p in pieces if np.sqrt(np.mean(p.astype(np.float64) ** 2)) > 0.01]
    assert sounding, "the recording holds no sound"
    return float(np.median([best_lag_correlation(p, source) for p in sounding]))


# -- without a browser: what the server sends ----------------------------------------------------------------------

TEXT_FILES = ("app.js", "index.html", "manifest.webmanifest", "style.css", "sw.js")
ICONS = ("apple-touch-icon.png", "icon-192.png", "icon-512.png", "icon-maskable-512.png")


def test_page_its_files_manifest_and_icons_are_served_with_nothing_from_elsewhere(server):
    from PIL import Image

    page = server.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert sorted(p.name for p in STATIC.iterdir()) == sorted(TEXT_FILES + ICONS)
    referenced = re.findall(r'(?:src|href)="(/[^"]*)"', page.text)
    assert sorted(set(referenced)) == [
        "/",
        "/ca.crt",
        "/static/app.js",
        "/static/apple-touch-icon.png",
        "/static/icon-192.png",
        "/static/manifest.webmanifest",
        "/static/style.css",
    ]
    assert "<script>" not in page.text and " style=" not in page.text  # no inline script or style
    for name in TEXT_FILES[:1] + TEXT_FILES[2:] + ICONS:
        response = server.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.content == (STATIC / name).read_bytes()
    for name in TEXT_FILES:  # offline: no CDN, no web font, no remote anything
        text = (STATIC / name).read_text(encoding="utf-8")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), name
    worker = server.get("/sw.js")
    assert worker.status_code == 200 and worker.headers["Content-Type"].startswith("text/javascript")
    assert worker.content == (STATIC / "sw.js").read_bytes()
    manifest_response = server.get("/static/manifest.webmanifest")
    assert manifest_response.headers["Content-Type"].startswith("application/manifest+json")
    manifest = manifest_response.json()
    assert (manifest["start_url"], manifest["scope"], manifest["display"]) == ("/", "/", "standalone")
    assert manifest["lang"] == "zh-CN" and manifest["short_name"]
    purposes = set()
    for icon in manifest["icons"]:
        image = Image.open(io.BytesIO(server.get(icon["src"]).content))
        assert image.format == "PNG" and "x".join(map(str, image.size)) == icon["sizes"], icon
        purposes.add(icon["purpose"])
    assert purposes == {"any", "maskable"}
    assert {"192x192", "512x512"} <= {icon["sizes"] for icon in manifest["icons"]}
    assert server.get("/static/../server/app.py").status_code == 404
    assert server.get("/static/%2e%2e/server/app.py").status_code == 404
    assert server.get("/static/nothing.js").status_code == 404


def test_page_and_worker_are_open_but_the_api_is_not_when_auth_is_on(setup, tmp_path):
    _, models, config = setup
    srv = Server(models, config, "--auth", "--token-file", str(tmp_path / "token"))
    try:
        for path in ("/", "/static/app.js", "/sw.js", "/static/manifest.webmanifest", "/static/icon-192.png"):
            assert srv.get(path).status_code == 200, path
        assert srv.get("/patients").status_code == 401
    finally:
        srv.stop()


# -- in Chromium -------------------------------------------------------------------------------------------------


def test_hold_to_record_shows_the_phrase_first_reads_it_aloud_and_keeps_a_confirmed_one(
    browser, server, transcriber, fake_mic, setup
):
    kept = setup[0] / "kept" / "p1"
    browser.open(lan(server) + "/")
    # https on the LAN name, with the local CA trusted as on the phone: a secure context, the mic is allowed
    assert browser.eval("window.isSecureContext") is True
    browser.wait_for("document.body.dataset.state === 'idle'")
    assert browser.eval("document.getElementById('patient').value") == "p1"
    assert browser.eval("document.getElementById('insecure').hidden") is True
    assert browser.on_first_screen("#record")  # the big button: in thumb reach without scrolling
    tiles = browser.eval("Array.from(document.querySelectorAll('#grid .tile')).map(t => t.textContent)")
    assert tiles == PHRASES
    assert (
        browser.eval("document.getElementById('collecting').hidden") is False
    )  # the page says it keeps them
    browser.hold("#record", 2.5)
    browser.wait_for("document.body.dataset.state === 'done'", timeout=120)
    sent = base64.b64decode(browser.eval("Resonance.lastWavBase64()"))
    info = sf.info(io.BytesIO(sent))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 1.0 < info.duration < 3.5, info.duration  # about as long as the button was held
    recorded, _ = sf.read(io.BytesIO(sent), dtype="float32")
    source, _ = sf.read(fake_mic, dtype="float32")
    # The page heard the fake microphone's speech, resampled correctly (48 kHz capture -> 16 kHz WAV).
    similarity = segment_similarity(recorded, source)
    assert similarity > 0.9, similarity
    expected = transcriber.transcribe(sent, mode="both")  # what /transcribe does
    answer = expected_answer(expected)
    assert shown_phrase(browser) == answer  # first and biggest
    assert shown_text(browser) == expected.text  # the free text, under it
    reply = browser.eval("Resonance.state.lastReply")
    assert reply["text"] == expected.text and reply["patient"] == "p1"
    assert browser.eval("document.querySelectorAll('#history li').length") == 1
    # Read aloud, in Chinese.
    capture_speech(browser)
    if answer != "没听清":
        browser.eval("document.getElementById('speak').click()")
        assert browser.eval("window.__said") == [{"text": answer, "lang": "zh-CN"}]
    # ✓ keeps the recording with the shown phrase; with nothing to confirm, ✗ and a tap on the right phrase.
    assert labels_of(kept) == []
    if answer != "没听清":
        browser.eval("document.getElementById('right').click()")
        confirmed = answer
    else:
        browser.eval("document.getElementById('wrong').click()")
        browser.eval("document.querySelector('#grid .tile[data-phrase=\"我想喝水\"]').click()")
        confirmed = "我想喝水"
    browser.wait_for(
        "/Saved for the next training/.test(document.getElementById('feedback-status').textContent)"
    )
    (entry,) = labels_of(kept)
    assert entry["text"] == confirmed and (kept / entry["audio"]).is_file()
    assert browser.eval("document.getElementById('right').disabled") is True  # once is enough
    browser.eval("window.scrollTo(0, 0)")
    browser.screenshot(SCREENSHOT)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser.js_errors() == []
    print(f"recorded {info.duration:.2f} s (similarity {similarity:.3f}); shown {answer!r}; {SCREENSHOT}")


def test_a_wrong_result_is_corrected_by_typing_and_kept(browser, server, setup):
    kept = setup[0] / "kept" / "p1"
    before = labels_of(kept)
    browser.open(lan(server) + "/")
    browser.wait_for("document.body.dataset.state === 'idle'")
    browser.hold("#record", 2.0)
    browser.wait_for("document.body.dataset.state === 'done'", timeout=120)
    browser.eval("document.getElementById('wrong').click()")
    assert browser.eval("document.body.classList.contains('correcting')") is True
    assert browser.eval("document.getElementById('correct-form').hidden") is False
    browser.eval("document.getElementById('correct-text').value = '我想出去走走'")
    browser.eval("document.getElementById('correct-save').click()")
    browser.wait_for("/Saved/.test(document.getElementById('feedback-status').textContent)")
    after = labels_of(kept)
    assert after[: len(before)] == before and after[-1]["text"] == "我想出去走走"
    assert shown_phrase(browser) == "我想出去走走"  # the result now says what was meant
    assert browser.eval("document.body.classList.contains('correcting')") is False
    assert "✗→✓" in browser.eval("document.getElementById('history').textContent")
    from resonance.data.check import inspect_dataset

    assert inspect_dataset(kept).errors == []


def test_a_tap_is_too_short_and_sends_nothing(browser, server):
    browser.open(lan(server) + "/")
    browser.wait_for("document.body.dataset.state === 'idle'")
    browser.hold("#record", 0.05)
    browser.wait_for(
        "document.body.dataset.state === 'idle' && /Too short/.test(document.getElementById('status').textContent)"
    )
    assert browser.eval("Resonance.state.lastWav") is None


def test_without_a_microphone_the_big_button_opens_the_phones_recorder(
    browser, server, transcriber, tmp_path
):
    plain_port = server.plain_base.rsplit(":", 1)[1]  # plain http beside https, as on the LAN
    browser.open(f"http://{INSECURE_HOST}:{plain_port}/")
    assert browser.eval("window.isSecureContext") is False
    browser.wait_for("document.body.dataset.state === 'idle'")
    assert browser.eval("document.getElementById('insecure').hidden") is False  # says why there is no mic
    assert "https" in browser.eval("document.getElementById('insecure').textContent")
    # ... and where to go: the certificate to trust once, then the same page over https
    https_port = server.base.rsplit(":", 1)[1]
    assert (
        browser.eval("document.getElementById('https-link').href") == f"https://{INSECURE_HOST}:{https_port}/"
    )
    assert browser.eval("document.getElementById('ca-link').hidden") is False
    served_ca = browser.eval("fetch('/ca.crt').then(r => r.text())")
    assert served_ca == Path(server.verify).read_text(encoding="ascii")
    assert browser.eval("document.getElementById('record').hidden") is True
    assert browser.on_first_screen("#recorder")  # the big button is now the phone's recorder, on screen
    upload = "document.getElementById('upload')"
    assert browser.eval(f"{upload}.hasAttribute('capture') && {upload}.accept") == "audio/*"
    assert browser.eval("document.getElementById('recorder').htmlFor") == "upload"
    browser.screenshot(SCREENSHOT.with_name("webpage-insecure.png"))
    clip = tmp_path / "upload.wav"
    clip.write_bytes(SPEECH_CLIP.read_bytes())
    browser.set_files("#upload", clip)
    browser.wait_for("document.body.dataset.state === 'done'", timeout=120)
    expected = transcriber.transcribe(clip, mode="both")
    assert shown_text(browser) == expected.text
    assert shown_phrase(browser) == expected_answer(expected)
    base64_sent = browser.eval("Resonance.lastWavBase64()")
    assert base64.b64decode(base64_sent) == clip.read_bytes()  # a WAV goes to the server as it is


def test_wav_encoder_and_resampler_output_through_the_server(browser, server, transcriber):
    browser.open(lan(server) + "/")
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
    browser.open(lan(server) + "/")
    values = browser.eval(
        "Array.from(new Int16Array(Resonance.encodeWav(new Float32Array([0, 1, -1, 2, -2, NaN, 0.5]), 16000), 44))"
    )
    assert values == [0, 32767, -32768, 32767, -32768, 0, 16384]


def test_the_phrase_comes_first_and_a_rejection_says_not_understood(browser, server):
    browser.open(lan(server) + "/")
    browser.wait_for("document.body.dataset.state === 'idle'")
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
    # The server's own fields (mode=both): phrase + phrase_confidence; "none of these" is 没听清.
    reply = "{text: '我相喝水', phrase: '我想喝水', phrase_confidence: 0.91, phrase_rejected: false, phrase_reason: 'matched', phrases: [{text: '我想喝水', confidence: 0.91}]}"
    browser.eval(f"Resonance.showResult({reply})")
    assert shown_phrase(browser) == "我想喝水"
    assert browser.eval("document.getElementById('heard').hidden") is False
    assert browser.eval("document.getElementById('heard').textContent").endswith("我相喝水")
    assert "91%" in browser.eval("document.getElementById('meta').textContent")
    font = "parseFloat(getComputedStyle(document.getElementById('{}')).fontSize)"
    assert browser.eval(font.format("phrase")) > 1.5 * browser.eval(font.format("heard"))  # biggest
    rejected = "{text: '我相', phrase: null, phrase_rejected: true, phrase_reason: 'none_of_these', phrases: [{text: '开灯', confidence: 0.3}]}"
    assert browser.eval(f"Resonance.bestPhrase({rejected})") is None
    browser.eval(f"Resonance.showResult({rejected})")
    assert shown_phrase(browser) == "没听清"
    assert browser.eval("document.getElementById('speak').disabled") is True  # nothing to read aloud
    assert browser.eval("document.getElementById('heard').textContent").endswith("我相")
    # A patient without a phrase board: the free text is the answer, shown once.
    free = "{text: '今天天气很好', phrase: null, phrase_rejected: true, phrase_reason: 'no_phrases', phrases: []}"
    browser.eval(f"Resonance.showResult({free})")
    assert shown_phrase(browser) == "今天天气很好"
    assert browser.eval("document.getElementById('heard').hidden") is True
    browser.eval("Resonance.showResult({text: ''})")
    assert shown_phrase(browser) == "没听清"
    assert "no words" in browser.eval("document.getElementById('text').textContent")


def test_history_keeps_this_sessions_results_and_auto_speak_reads_them(browser, server):
    browser.open(lan(server) + "/")
    browser.wait_for("document.body.dataset.state === 'idle'")
    capture_speech(browser)
    browser.eval("document.getElementById('auto-speak').click()")
    for text in ("开灯", "关灯"):
        reply = f"{{text: '{text}', phrase: '{text}', phrase_confidence: 0.9, phrase_rejected: false, phrases: []}}"
        browser.eval(f"Resonance.addResult({reply}, new Blob(['x']), 'p1')")
    assert [s["text"] for s in browser.eval("window.__said")] == ["开灯", "关灯"]
    items = browser.eval("Array.from(document.querySelectorAll('#history .said')).map(e => e.textContent)")
    assert items == ["关灯", "开灯"]  # newest first
    browser.eval("document.querySelectorAll('#history button')[1].click()")  # back to the first one
    assert shown_phrase(browser) == "开灯"
    # A tap on the phrase board says the phrase for the patient; it is no recording: nothing to confirm.
    browser.eval("document.querySelector('#grid .tile[data-phrase=\"谢谢\"]').click()")
    assert browser.eval("window.__said")[-1] == {"text": "谢谢", "lang": "zh-CN"}
    assert shown_phrase(browser) == "谢谢"
    assert browser.eval("document.getElementById('right').hidden") is True
    browser.open(lan(server) + "/")  # the setting is remembered, the history is this session's only
    assert browser.eval("document.getElementById('auto-speak').checked") is True
    assert browser.eval("document.getElementById('history-card').hidden") is True
    browser.eval("document.getElementById('auto-speak').click()")


def test_token_from_the_qr_codes_address_or_typed_once_is_kept_and_sent(browser, setup, tmp_path):
    token_file = tmp_path / "token"
    srv = https_server(setup, "--auth", "--token-file", str(token_file))
    page = lan(srv)
    try:
        token = token_file.read_text(encoding="utf-8").strip()
        browser.open(page + "/")
        browser.wait_for("document.body.dataset.state === 'token'")
        assert browser.eval("document.getElementById('token-box').hidden") is False
        browser.eval("document.getElementById('token').value = 'wrong-token'")
        browser.eval("document.getElementById('token-save').click()")
        browser.wait_for("!document.getElementById('token-error').hidden")  # asked again, says why
        browser.eval(f"document.getElementById('token').value = {json.dumps(token)}")
        browser.eval("document.getElementById('token-save').click()")
        browser.wait_for("document.body.dataset.state === 'idle'")
        assert browser.eval("document.getElementById('patient').value") == "p1"
        browser.open(page + "/")  # a new visit: the token is remembered (localStorage), not asked again
        browser.wait_for("document.body.dataset.state === 'idle'")
        assert browser.eval("document.getElementById('token-box').hidden") is True
        clip = tmp_path / "c.wav"
        clip.write_bytes(wav(tone(1.0)))
        browser.set_files("#upload", clip)
        browser.wait_for("document.body.dataset.state === 'done'", timeout=120)
        assert browser.eval("Resonance.state.lastReply.patient") == "p1"
        # The QR code's address carries the token in the fragment: kept, then gone from the address bar.
        browser.eval("localStorage.clear()")
        browser.open(page + "/#token=" + token)
        browser.wait_for("document.body.dataset.state === 'idle'")
        assert browser.eval("location.hash") == "" and browser.eval("location.href") == page + "/"
        assert browser.eval("localStorage.getItem('resonance.token')") == token
    finally:
        srv.stop()
    assert re.search(r"POST /transcribe 200", srv.output)
    assert re.search(r"GET /patients 401", srv.output)
    requests_log = [line for line in srv.lines if re.search(r"(GET|POST) /", line)]
    assert any("GET / 200" in line for line in requests_log)
    assert not any(token in line for line in requests_log)  # the fragment never reaches the server


def test_installed_page_opens_offline_and_says_the_server_cannot_be_reached(browser, setup):
    srv = https_server(setup)
    page = lan(srv)
    try:
        browser.open(page + "/")
        browser.wait_for("document.body.dataset.state === 'idle'")
        scope = browser.eval("navigator.serviceWorker.ready.then(r => r.active && r.scope)", timeout=30)
        assert scope == page + "/"  # installable over https on the LAN name: the CA is trusted
        browser.wait_for("navigator.serviceWorker.controller !== null", timeout=30)  # clients.claim()
        manifest = browser.eval(
            "fetch(document.querySelector('link[rel=manifest]').href).then(r => r.json()).then(m => m.start_url)"
        )
        assert manifest == "/"
        cached = browser.eval(
            "caches.open('resonance-shell-v1').then(c => c.keys()).then(k => k.map(r => new URL(r.url).pathname))"
        )
        assert {"/", "/static/app.js", "/static/style.css", "/static/manifest.webmanifest"} <= set(cached)
    finally:
        srv.stop()
    browser.open(page + "/")  # the server is gone: the shell comes from the worker's cache
    browser.wait_for("!document.getElementById('offline').hidden", timeout=30)
    assert "Cannot reach the server" in browser.eval("document.getElementById('offline').textContent")
    assert browser.eval("document.body.dataset.state") == "offline"


def test_no_request_failed_behind_the_pages_back(server, browser):
    assert server.alive, server.output
    assert "Traceback" not in server.output
    assert browser.js_errors() == [], browser.js_errors()
    assert server.get("/health").json()["status"] == "ok"
