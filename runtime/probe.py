"""`resonance probe`: the hostile home network of issue #12, against a running server; prints one table.

Two phases, bounded in count and time, loopback only (unless allowed, like `resonance loadtest`):

1. **decompression bombs**: ``bombs`` uploads at once of an M4A of 20 minutes of 48 kHz stereo (~570 KB
   that decodes to 460 MB of samples), while the server's memory is sampled every 10 ms;
2. **everything at once** for ``seconds``: idle TCP connections, connections that send a header line every
   2 s and never finish, unfinished 50 MB uploads without a token, transcribing clients with real or
   generated clips, and a /health poller timing every answer.

It reports per case what was sent and answered (2xx/4xx/5xx/dropped, latency), the server's RSS (idle, peak
under the bombs, peak under load, after), and the issue's targets: peak RSS under the bombs at most +100 MB
over idle, /health p99 at most 200 ms under load, no unexpected 5xx.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from resonance.errors import ResonanceError, require
from resonance.runtime.loadtest import check_target, good_clips, multipart, require_plain_http
from resonance.system import rss_mb

BOMB_RSS_TARGET_MB = 100.0  # issue #12: peak RSS under the bomb at most this much over idle
HEALTH_P99_TARGET_MS = 200.0  # issue #12: /health p99 under load
SLOW_HEADER_EVERY_S = 2.0  # how often a slow client sends one more header line
HEALTH_EVERY_S = 0.1  # how often the /health poller asks
REQUEST_TIMEOUT_S = 60.0


def decompression_bomb(seconds: float = 1200.0, rate: int = 48000, container: str = "mp4") -> bytes:
    """A small compressed file of ``seconds`` of stereo silence (AAC at 32 kbit/s): 20 minutes of 48 kHz
    stereo is ~570 KB that decodes to 460 MB of float samples. ``container``: "mp4" (M4A, the length in
    its header) or "adts" (raw AAC, a length FFmpeg can only estimate)."""
    av = require("av", "formats", "building the decompression-bomb case")
    out = io.BytesIO()
    frame_samples = 16384
    silence = np.zeros((2, frame_samples), np.float32)
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream("aac", rate=rate)
        stream.layout = "stereo"
        stream.bit_rate = 32000
        for index in range(int(seconds * rate) // frame_samples):
            frame = av.AudioFrame.from_ndarray(silence, format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = index * frame_samples
            for packet in stream.encode(frame):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()


@dataclass(frozen=True)
class ProbeSettings:
    url: str  # the server's base URL, e.g. http://127.0.0.1:8000
    token: Optional[str] = None  # for a server started with --auth (the transcribing clients use it)
    server_pid: Optional[int] = None  # read RSS from /proc/PID (same machine); else /health's rss_mb
    patient: Optional[str] = None  # form field `patient` (None: the server's only patient)
    audio_dir: Optional[Path] = None  # real clips for the transcribing clients (default: generated)
    bombs: int = 3  # decompression bombs sent at once
    bomb_seconds: float = 1200.0  # the audio one bomb decodes to
    idle_connections: int = 30
    slow_connections: int = 10
    unfinished_uploads: int = 10  # 50 MB announced, 1 MB sent, no token
    clients: int = 8  # transcribing clients
    seconds: float = 30.0  # length of the everything-at-once phase
    allow_remote: bool = False

    def __post_init__(self) -> None:
        counts = (self.bombs, self.idle_connections, self.slow_connections, self.unfinished_uploads)
        if min(counts) < 0 or self.clients < 1 or not 0 < self.seconds <= 600:
            raise ResonanceError(
                "probe counts must be >= 0, --clients >= 1 and --seconds in (0, 600]", "e.g. --seconds 30"
            )


@dataclass
class CaseRow:
    """One line of the table: what was sent, how it was answered, how fast."""

    case: str
    sent: int = 0
    statuses: List[int] = field(default_factory=list)  # 0: no answer (connection dropped, timed out)
    latencies_s: List[float] = field(default_factory=list)
    expected_5xx: Tuple[int, ...] = ()  # 5xx that are a correct answer here (503 busy)
    note: str = ""

    def count(self, low: int, high: int) -> int:
        return sum(1 for s in self.statuses if low <= s < high)

    @property
    def unexpected_5xx(self) -> int:
        return sum(1 for s in self.statuses if s >= 500 and s not in self.expected_5xx)

    @property
    def dropped(self) -> int:
        return self.statuses.count(0)

    def latency_ms(self, quantile: float) -> Optional[float]:
        return round(float(np.quantile(self.latencies_s, quantile)) * 1000, 1) if self.latencies_s else None


@dataclass
class ProbeReport:
    rows: List[CaseRow] = field(default_factory=list)
    rss_idle_mb: Optional[float] = None
    rss_bomb_peak_mb: Optional[float] = None
    rss_load_peak_mb: Optional[float] = None
    rss_after_mb: Optional[float] = None
    health: Optional[CaseRow] = None

    @property
    def bomb_growth_mb(self) -> Optional[float]:
        if self.rss_idle_mb is None or self.rss_bomb_peak_mb is None:
            return None
        return round(self.rss_bomb_peak_mb - self.rss_idle_mb, 1)

    @property
    def unexpected_5xx(self) -> int:
        return sum(row.unexpected_5xx for row in self.rows)

    def targets(self) -> List[Tuple[str, str, str, bool]]:
        """(target, measured, limit, met) for the issue's three targets."""
        growth = self.bomb_growth_mb
        p99 = self.health.latency_ms(0.99) if self.health else None
        return [
            (
                "peak RSS under the bombs, over idle",
                "unknown" if growth is None else f"{growth:+.1f} MB",
                f"<= +{BOMB_RSS_TARGET_MB:g} MB",
                growth is not None and growth <= BOMB_RSS_TARGET_MB,
            ),
            (
                "/health p99 under load",
                "unknown" if p99 is None else f"{p99:.1f} ms",
                f"<= {HEALTH_P99_TARGET_MS:g} ms",
                p99 is not None and p99 <= HEALTH_P99_TARGET_MS and self.health.dropped == 0,
            ),
            ("unexpected 5xx", str(self.unexpected_5xx), "0", self.unexpected_5xx == 0),
        ]

    @property
    def ok(self) -> bool:
        return all(met for *_, met in self.targets())

    def table(self) -> str:
        header = f"{'case':<46} {'sent':>5} {'2xx':>5} {'4xx':>5} {'5xx':>5} {'dropped':>7} {'p50 ms':>8} {'p99 ms':>8}  note"
        lines = [header, "-" * len(header)]
        for row in self.rows:
            p50, p99 = row.latency_ms(0.5), row.latency_ms(0.99)
            fives = row.count(500, 600)
            lines.append(
                f"{row.case:<46} {row.sent:>5} {row.count(200, 300):>5} {row.count(400, 500):>5} "
                f"{fives:>5} {row.dropped:>7} {'-' if p50 is None else p50:>8} {'-' if p99 is None else p99:>8}"
                f"  {row.note}".rstrip()
            )
        lines.append("")
        lines.append(
            f"server RSS: idle {_mb(self.rss_idle_mb)}, peak under the bombs {_mb(self.rss_bomb_peak_mb)}, "
            f"peak under load {_mb(self.rss_load_peak_mb)}, after {_mb(self.rss_after_mb)}"
        )
        lines.append("")
        lines.append(f"{'target':<40} {'measured':>12} {'limit':>12}  verdict")
        for name, measured, limit, met in self.targets():
            lines.append(f"{name:<40} {measured:>12} {limit:>12}  {'met' if met else 'NOT MET'}")
        lines.append("result: OK" if self.ok else "result: FAILED")
        return "\n".join(lines)


def _mb(value: Optional[float]) -> str:
    return "unknown" if value is None else f"{value:.1f} MB"


# -- the pieces ---------------------------------------------------------------------------------------------


class MemorySampler:
    """The server's RSS every ``every_s`` in a thread; ``peak()`` since the last ``reset()``."""

    def __init__(self, read: Callable[[], Optional[float]], every_s: float = 0.01) -> None:
        self._read = read
        self._every_s = every_s
        self._peak: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-rss", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            value = self._read()
            if value is not None and (self._peak is None or value > self._peak):
                self._peak = value

    def peak(self) -> Optional[float]:
        return self._peak

    def reset(self) -> None:
        self._peak = None


class Target:
    """Where the server is and how to talk to it (plain http.client: what an app does)."""

    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self.host, self.port, self.prefix = check_target(settings.url, settings.allow_remote)
        require_plain_http(self.host, self.port, self.prefix, self.headers())

    def headers(self, content_type: Optional[str] = None, token: bool = True) -> Dict[str, str]:
        headers = {"Content-Type": content_type} if content_type else {}
        if token and self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        return headers

    def request(
        self, method: str, path: str, body: bytes = b"", content_type: Optional[str] = None
    ) -> Tuple[int, float, bytes]:
        """(status or 0 when dropped, seconds, body) of one request on a new connection."""
        started = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.request(method, self.prefix + path, body=body or None, headers=self.headers(content_type))
            response = conn.getresponse()
            return response.status, time.perf_counter() - started, response.read()
        except (OSError, http.client.HTTPException):
            return 0, time.perf_counter() - started, b""
        finally:
            conn.close()

    def rss_mb(self) -> Optional[float]:
        if self.settings.server_pid:
            return rss_mb(self.settings.server_pid)
        status, _, body = self.request("GET", "/health")
        if status != 200:
            return None
        return json.loads(body or b"{}").get("rss_mb")

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=REQUEST_TIMEOUT_S)


def _in_parallel(jobs: List[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def send_bombs(target: Target, settings: ProbeSettings) -> CaseRow:
    bomb = decompression_bomb(settings.bomb_seconds)
    body, content_type = multipart(_fields(settings), {"file": ("bomb.m4a", bomb, "audio/mp4")})
    row = CaseRow(
        f"decompression bomb x{settings.bombs} at once",
        note=f"{len(bomb) // 1024} KB M4A = {settings.bomb_seconds / 60:g} min of 48 kHz stereo; 413 expected",
    )
    lock = threading.Lock()

    def one() -> None:
        status, seconds, _ = target.request("POST", "/transcribe", body, content_type)
        with lock:
            row.sent += 1
            row.statuses.append(status)
            row.latencies_s.append(seconds)

    _in_parallel([one] * settings.bombs)
    return row


def _fields(settings: ProbeSettings) -> Dict[str, str]:
    return {"patient": settings.patient} if settings.patient else {}


class RawConnections:
    """``n`` TCP connections that each send ``first`` (maybe nothing) and then, maybe, a line now and then;
    tells which the server closed, and how long after opening."""

    def __init__(self, target: Target, n: int, first: bytes = b"") -> None:
        self.opened = time.monotonic()
        self.sockets = [target.connect() for _ in range(n)]
        self.closed_after: Dict[int, float] = {}
        for sock in self.sockets:
            if first:
                sock.sendall(first)

    def poll(self) -> None:
        """Note the connections the server has closed (a read of b"" or a reset)."""
        open_ones = [s for s in self.sockets if s.fileno() not in self.closed_after]
        if not open_ones:
            return
        readable, _, _ = select.select(open_ones, [], [], 0)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.closed_after[sock.fileno()] = time.monotonic() - self.opened

    def send_line(self, line: bytes) -> None:
        for sock in self.sockets:
            if sock.fileno() not in self.closed_after:
                try:
                    sock.sendall(line)
                except OSError:
                    self.closed_after[sock.fileno()] = time.monotonic() - self.opened

    def row(self, case: str) -> CaseRow:
        self.poll()
        closed = sorted(self.closed_after.values())
        when = f", after {closed[0]:.1f}-{closed[-1]:.1f} s" if closed else ""
        return CaseRow(case, sent=len(self.sockets), note=f"{len(closed)} closed by the server{when}")

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def unfinished_upload(target: Target, announced_mb: float, sent_mb: float) -> Tuple[int, float]:
    """Headers announcing ``announced_mb`` without a token, ``sent_mb`` of body, then nothing: (status, s)."""
    head = (
        f"POST {target.prefix}/transcribe HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        "Content-Type: multipart/form-data; boundary=probe\r\n"
        f"Content-Length: {int(announced_mb * 2**20)}\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    sock = target.connect()
    sock.settimeout(15)
    try:
        sock.sendall(head)
        with contextlib.suppress(OSError):  # the server stopped reading: its answer is what counts
            sock.sendall(bytes(int(sent_mb * 2**20)))
        reply = sock.recv(64)
        status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0
    except (OSError, ValueError, IndexError):
        status = 0
    finally:
        sock.close()
    return status, time.perf_counter() - started


# -- the run ------------------------------------------------------------------------------------------------


def run_probe(settings: ProbeSettings, log: Callable[[str], None] = lambda line: None) -> ProbeReport:
    target = Target(settings)
    report = ProbeReport()
    rng = np.random.default_rng(0)
    clips = [
        multipart(_fields(settings), {"file": (name, data, "audio/wav")})
        for name, data in good_clips(settings.audio_dir, rng)
    ]
    idle = CaseRow("/health, idle")
    for _ in range(20):
        status, seconds, _ = target.request("GET", "/health")
        idle.sent += 1
        idle.statuses.append(status)
        idle.latencies_s.append(seconds)
    report.rows.append(idle)
    report.rss_idle_mb = target.rss_mb()
    log(f"idle: server RSS {_mb(report.rss_idle_mb)}")
    with MemorySampler(target.rss_mb) as sampler:
        if settings.bombs:
            log(f"phase 1: {settings.bombs} decompression bombs at once")
            report.rows.append(send_bombs(target, settings))
            report.rss_bomb_peak_mb = sampler.peak()
        sampler.reset()
        log(f"phase 2: everything at once for {settings.seconds:g} s")
        report.rows.extend(_everything_at_once(target, settings, clips, report))
        report.rss_load_peak_mb = sampler.peak()
    time.sleep(1.0)
    report.rss_after_mb = target.rss_mb()
    return report


def _everything_at_once(
    target: Target, settings: ProbeSettings, clips: List[Tuple[bytes, str]], report: ProbeReport
) -> List[CaseRow]:
    deadline = time.monotonic() + settings.seconds
    idle = RawConnections(target, settings.idle_connections)
    slow_head = f"POST {target.prefix}/transcribe HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n".encode()
    slow = RawConnections(target, settings.slow_connections, slow_head)
    uploads = CaseRow(
        f"unfinished 50 MB uploads without a token x{settings.unfinished_uploads}",
        note="1 MB sent, then nothing; refused from the headers",
    )
    transcribing = CaseRow(
        f"transcribing clients x{settings.clients}", expected_5xx=(503,), note="503 = busy (expected)"
    )
    health = CaseRow("/health under all of it")
    lock = threading.Lock()

    def record(row: CaseRow, status: int, seconds: float) -> None:
        with lock:
            row.sent += 1
            row.statuses.append(status)
            row.latencies_s.append(seconds)

    def client(index: int) -> None:
        n = index
        while time.monotonic() < deadline:
            body, content_type = clips[n % len(clips)]
            n += 1
            status, seconds, _ = target.request("POST", "/transcribe", body, content_type)
            record(transcribing, status, seconds)

    def poll_health() -> None:
        while time.monotonic() < deadline:
            status, seconds, _ = target.request("GET", "/health")
            record(health, status, seconds)
            time.sleep(HEALTH_EVERY_S)

    def trickle() -> None:
        while time.monotonic() < deadline:
            time.sleep(SLOW_HEADER_EVERY_S)
            slow.send_line(b"X-Probe: still here\r\n")
            slow.poll()
            idle.poll()

    def upload() -> None:
        record(uploads, *unfinished_upload(target, 50, 1))

    jobs: List[Callable[[], None]] = [poll_health, trickle]
    jobs += [lambda i=i: client(i) for i in range(settings.clients)]
    jobs += [upload] * settings.unfinished_uploads
    try:
        _in_parallel(jobs)
        report.health = health
        return [
            idle.row(f"idle connections x{settings.idle_connections}"),
            slow.row(f"slow-header connections x{settings.slow_connections}"),
            uploads,
            transcribing,
            health,
        ]
    finally:
        idle.close()
        slow.close()
