"""`resonance loadtest`: many clients, good and bad uploads, against a running server; bounded in count and time.

The point is robustness as much as speed: every deliberately bad upload must get its 4xx, every good one 200
(or 503 "busy" under overload), and nothing may answer another 5xx or drop the connection. Loopback only
unless ``allow_remote``: a load test is not something to aim at someone else's machine by accident.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import numpy as np

from resonance.errors import ResonanceError
from resonance.system import rss_mb

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True)
class LoadtestSettings:
    url: str  # server base URL, e.g. http://127.0.0.1:8000
    clients: int = 8  # parallel connections
    requests: int = 1000  # total requests
    max_seconds: float = 120.0  # stop sending after this long
    patient: Optional[str] = None  # form field `patient` (None: the server's only patient)
    audio_dir: Optional[Path] = None  # real clips for the good requests (default: generated tones)
    bad_fraction: float = 0.25  # share of deliberately bad requests
    token: Optional[str] = None  # bearer token for a server started with --auth
    server_pid: Optional[int] = None  # read VmRSS from /proc/PID (same machine); else /health's rss_mb
    allow_remote: bool = False  # permit a non-loopback host
    seed: int = 0  # clip generation and request order
    timeout_s: float = 120.0  # per request
    # Requests sent (by all clients at once, and not counted) before the "before" memory reading: the first
    # requests fill onnxruntime's and malloc's buffers once, which is warm-up, not growth.
    warmup: Optional[int] = None  # None: 4 per client; 0: none
    max_rss_growth: float = 0.10  # growth after warm-up above this fails the run (the flat-memory target)

    def __post_init__(self) -> None:
        if self.clients < 1 or self.requests < 1 or self.max_seconds <= 0:
            raise ResonanceError(
                "--clients, --requests and --max-seconds must be positive", "e.g. --clients 8"
            )
        if self.warmup is not None and self.warmup < 0:
            raise ResonanceError("--warmup must be >= 0", "e.g. --warmup 32, or 0 for none")
        if not 0.0 <= self.bad_fraction <= 1.0:
            raise ResonanceError(f"--bad-fraction {self.bad_fraction} is not in [0, 1]", "e.g. 0.25")


@dataclass(frozen=True)
class Case:
    """One prepared request: a body and the statuses a correct server may answer."""

    name: str
    body: bytes
    content_type: str
    expect: Tuple[int, ...]

    @property
    def good(self) -> bool:
        return 200 in self.expect


@dataclass
class Outcome:
    case: str
    status: int  # 0 = no HTTP answer (connection error, timeout)
    latency_s: float
    expected: bool
    detail: str = ""


@dataclass
class LoadtestReport:
    outcomes: List[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0
    rss_start_mb: Optional[float] = None  # before the warm-up
    rss_before_mb: Optional[float] = None  # after the warm-up: the baseline of rss_growth
    rss_after_mb: Optional[float] = None
    warmup_requests: int = 0
    warmup_unexpected: int = 0  # warm-up answers other than the expected ones
    max_rss_growth: float = 0.10

    @property
    def status_counts(self) -> Dict[int, int]:
        return dict(sorted(Counter(o.status for o in self.outcomes).items()))

    @property
    def unexpected_5xx(self) -> List[Outcome]:
        return [o for o in self.outcomes if o.status >= 500 and not o.expected]

    @property
    def connection_errors(self) -> List[Outcome]:
        return [o for o in self.outcomes if o.status == 0]

    @property
    def unexpected(self) -> List[Outcome]:
        return [o for o in self.outcomes if not o.expected]

    @property
    def rss_growth(self) -> Optional[float]:
        """Relative growth of the server's memory during the measured requests (after the warm-up)."""
        if not self.rss_before_mb or self.rss_after_mb is None:
            return None
        return self.rss_after_mb / self.rss_before_mb - 1

    @property
    def memory_ok(self) -> bool:
        return self.rss_growth is None or self.rss_growth <= self.max_rss_growth

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.warmup_unexpected and self.memory_ok

    def latency_ms(self, quantile: float, status: int = 200) -> Optional[float]:
        values = [o.latency_s for o in self.outcomes if o.status == status]
        return round(float(np.quantile(values, quantile)) * 1000, 1) if values else None

    def summary(self) -> str:
        n = len(self.outcomes)
        rate = n / self.elapsed_s if self.elapsed_s > 0 else 0.0
        good_200 = sum(1 for o in self.outcomes if o.status == 200)
        lines = [
            f"requests: {n} in {self.elapsed_s:.1f} s = {rate:.1f} req/s ({good_200} transcribed)",
            f"latency of 200s: p50 {self.latency_ms(0.5)} ms, p99 {self.latency_ms(0.99)} ms",
            f"status counts: {self.status_counts}",
            f"unexpected 5xx: {len(self.unexpected_5xx)}; connection errors: {len(self.connection_errors)}; "
            f"other unexpected statuses: {len(self.unexpected) - len(self.unexpected_5xx)}",
            self._memory_line(),
        ]
        by_case = Counter((o.case, o.status) for o in self.unexpected)
        for (case, status), count in sorted(by_case.items()):
            example = next(o.detail for o in self.unexpected if o.case == case and o.status == status)
            lines.append(f"  UNEXPECTED {status} for '{case}' x{count}: {example[:200]}")
        if self.warmup_unexpected:
            lines.append(f"  UNEXPECTED: {self.warmup_unexpected} warm-up requests got an unexpected status")
        lines.append("result: OK" if self.ok else "result: FAILED")
        return "\n".join(lines)

    def _memory_line(self) -> str:
        if self.rss_after_mb is None:
            return "server RSS: unknown (pass --server-pid, or a server whose /health reports rss_mb)"
        growth = self.rss_growth
        verdict = (
            ""
            if growth is None
            else (
                f", growth {100 * growth:+.1f} %"
                + ("" if self.memory_ok else f" > {100 * self.max_rss_growth:.0f} %: FAILED")
            )
        )
        return (
            f"server RSS: {self.rss_start_mb} MB at start, {self.rss_before_mb} MB after "
            f"{self.warmup_requests} warm-up requests, {self.rss_after_mb} MB after the test{verdict}"
        )


# -- request bodies -----------------------------------------------------------------------------------------------


def multipart(fields: Dict[str, str], files: Dict[str, Tuple[str, bytes, str]]) -> Tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type (what `curl -F` sends)."""
    boundary = f"resonance-{uuid.uuid4().hex}"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode("utf-8") + b"\r\n")
    for name, (filename, data, ctype) in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def speechlike(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced-sounding clip: a gliding harmonic tone with a syllable envelope, plus a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * t), 0, None)
    audio = 0.2 * voice * envelope + 0.005 * rng.standard_normal(t.size)
    return audio.astype(np.float32)


def good_clips(audio_dir: Optional[Path], rng: np.random.Generator) -> List[Tuple[str, bytes]]:
    if audio_dir is not None:
        files = sorted(p for p in Path(audio_dir).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise ResonanceError(
                f"no audio files (*.wav, *.flac, ...) under {audio_dir}", "point --audio at clips"
            )
        return [(p.name, p.read_bytes()) for p in files[:200]]
    clips = [(f"tone-{s:.1f}s-16k.wav", wav_bytes(speechlike(s, 16000, rng), 16000)) for s in (0.6, 1.5, 3.0)]
    stereo = np.stack([speechlike(2.0, 44100, rng)] * 2, axis=1)
    clips.append(("tone-2s-44k-stereo.wav", wav_bytes(stereo, 44100)))
    clips.append(("tone-1s-48k-float.wav", wav_bytes(speechlike(1.0, 48000, rng), 48000, "FLOAT")))
    return clips


def build_cases(settings: LoadtestSettings, rng: np.random.Generator) -> Tuple[List[Case], List[Case]]:
    """(good cases, bad cases), every body built once and reused."""
    fields = {"patient": settings.patient} if settings.patient else {}

    def upload(name: str, data: bytes, expect: Tuple[int, ...], field_name: str = "file") -> Case:
        body, ctype = multipart(fields, {field_name: (name, data, "audio/wav")})
        return Case(name, body, ctype, expect)

    good = [upload(name, data, (200, 503)) for name, data in good_clips(settings.audio_dir, rng)]
    valid = wav_bytes(speechlike(1.0, 16000, rng), 16000)
    nan = speechlike(0.5, 16000, rng)
    nan[100:200] = np.nan
    bad = [
        upload("random-bytes.wav", rng.bytes(20000), (400,)),
        upload("truncated-header.wav", valid[:30], (400,)),
        upload("empty.wav", b"", (400,)),
        upload("nan-samples.wav", wav_bytes(nan, 16000, "FLOAT"), (400,)),
        upload("png-renamed.wav", b"\x89PNG\r\n\x1a\n" + rng.bytes(4000), (400,)),
        upload("wrong-field-name.wav", valid, (400,), field_name="audio"),
        Case("not-multipart", valid, "audio/wav", (415,)),
    ]
    return good, bad


# -- running ------------------------------------------------------------------------------------------------------


PLAIN_HTTP_HINT = (
    "use the server's plain-http address: on loopback http://127.0.0.1:8000; a server on the LAN serves "
    "HTTPS on 8000 and plain http on 8080 (`http_port` in its device config, --http-port), e.g. "
    "http://192.168.1.20:8080"
)


def require_plain_http(host: str, port: int, prefix: str, headers: Dict[str, str]) -> None:
    """One GET /health before the run, so a wrong address is one clear error instead of every request
    counted as a failure: nothing listening, or the server's HTTPS port (it answers plain http with a
    redirect to https://; a server from before that change drops the connection)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    url = f"http://{host}:{port}{prefix}"
    try:
        conn.request("GET", f"{prefix}/health", headers=headers)
        response = conn.getresponse()
        response.read()
    except ConnectionRefusedError as exc:
        raise ResonanceError(
            f"nothing answers at {url}", "is `resonance serve` running there, on that port?"
        ) from exc
    except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
        raise ResonanceError(
            f"{url} closed the connection without an answer (an HTTPS port?)", PLAIN_HTTP_HINT
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ResonanceError(
            f"cannot reach {url}: {exc}", "check the address and that the server runs"
        ) from exc
    finally:
        conn.close()
    if response.status in (301, 302, 307, 308) and str(response.getheader("Location", "")).startswith(
        "https:"
    ):
        raise ResonanceError(
            f"{url} is the server's HTTPS port (it redirects plain http to https)", PLAIN_HTTP_HINT
        )


def check_target(url: str, allow_remote: bool = False) -> Tuple[str, int, str]:
    """(host, port, path prefix) of the server; refuses non-loopback hosts unless allowed."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        raise ResonanceError(f"{url}: this tool talks plain http, not https", PLAIN_HTTP_HINT)
    if parts.scheme != "http" or not parts.hostname:
        raise ResonanceError(f"not an http:// URL: {url}", "e.g. http://127.0.0.1:8000")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise ResonanceError(
            f"refusing to load-test {host}: not this machine",
            "run it against 127.0.0.1, or pass --allow-remote if that server is yours",
        )
    return host, parts.port or 80, parts.path.rstrip("/")


def _headers(settings: LoadtestSettings, content_type: Optional[str] = None) -> Dict[str, str]:
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    return headers


def server_rss_mb(settings: LoadtestSettings, host: str, port: int, prefix: str) -> Optional[float]:
    if settings.server_pid:
        return rss_mb(settings.server_pid)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", f"{prefix}/health", headers=_headers(settings))
        response = conn.getresponse()
        data = json.loads(response.read() or b"{}")
        return data.get("rss_mb") if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _client(
    settings: LoadtestSettings,
    target: Tuple[str, int, str],
    plan: Sequence[Case],
    next_index: List[int],
    lock: threading.Lock,
    deadline: float,
    outcomes: List[Outcome],
) -> None:
    host, port, prefix = target
    conn: Optional[http.client.HTTPConnection] = None
    while True:
        with lock:
            index = next_index[0]
            next_index[0] += 1
        if index >= len(plan) or time.monotonic() > deadline:
            break
        case = plan[index]
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=settings.timeout_s)
        start = time.perf_counter()
        try:
            conn.request(
                "POST", f"{prefix}/transcribe", body=case.body, headers=_headers(settings, case.content_type)
            )
            response = conn.getresponse()
            payload = response.read()
            status = response.status
            detail = payload[:300].decode("utf-8", "replace")
            if response.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            status, detail = 0, f"{type(exc).__name__}: {exc}"
            conn.close()
            conn = None
        elapsed = time.perf_counter() - start
        with lock:
            outcomes.append(Outcome(case.name, status, elapsed, status in case.expect, detail))
    if conn is not None:
        conn.close()


def run_loadtest(settings: LoadtestSettings) -> LoadtestReport:
    target = check_target(settings.url, settings.allow_remote)
    require_plain_http(*target, _headers(settings))
    rng = np.random.default_rng(settings.seed)
    good, bad = build_cases(settings, rng)
    order = random.Random(settings.seed)
    plan = [
        order.choice(bad) if bad and order.random() < settings.bad_fraction else order.choice(good)
        for _ in range(settings.requests)
    ]
    n_warmup = 4 * settings.clients if settings.warmup is None else settings.warmup
    report = LoadtestReport(
        rss_start_mb=server_rss_mb(settings, *target), max_rss_growth=settings.max_rss_growth
    )
    if n_warmup:
        warm: List[Outcome] = []
        kinds = good + bad  # every kind of request once before the baseline: each has buffers of its own
        _run_clients(settings, target, [kinds[i % len(kinds)] for i in range(n_warmup)], warm)
        report.warmup_requests = len(warm)
        report.warmup_unexpected = sum(not o.expected for o in warm)
    report.rss_before_mb = server_rss_mb(settings, *target)
    report.elapsed_s = _run_clients(settings, target, plan, report.outcomes)
    report.rss_after_mb = server_rss_mb(settings, *target)
    return report


def _run_clients(
    settings: LoadtestSettings, target: Tuple[str, int, str], plan: Sequence[Case], outcomes: List[Outcome]
) -> float:
    """Send ``plan`` from ``settings.clients`` parallel connections; returns the seconds it took."""
    lock = threading.Lock()
    next_index = [0]
    start = time.monotonic()
    deadline = start + settings.max_seconds
    threads = [
        threading.Thread(
            target=_client,
            args=(settings, target, plan, next_index, lock, deadline, outcomes),
            name=f"loadtest-client-{i}",
            daemon=True,
        )
        for i in range(settings.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - start
