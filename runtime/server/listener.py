"""The network side: sockets bound first, then uvicorn (asyncio, h11) serving the gate until Ctrl+C.

The only module that knows uvicorn. What it adds to uvicorn for a hostile LAN (issue #12):

* a **deadline for the request head**: uvicorn waits forever for the first request of a connection, and a
  client that sends one header byte every few seconds keeps it open; here a connection that has not sent a
  whole request head ``HEAD_TIMEOUT_S`` after connecting (or after its previous answer) is closed;
* a **cap on open connections that cannot starve /health**: past ``MAX_CONNECTIONS`` the oldest connection
  that is not in the middle of a request is closed to make room, instead of refusing the newcomer
  (uvicorn's own ``limit_concurrency`` answers 503 to everyone once idle sockets fill it);
* idle keep-alive connections closed after ``KEEP_ALIVE_S``;
* a **lingering close** after refusing a body the client is still sending, so it reads the error.

Several endpoints (sockets, each plain or TLS) can be served by one event loop, with other servers (e.g. a
Wyoming server) beside them: ``Front([Endpoint(...), ...]).run(app, other_coroutine_function, ...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, List, Optional, Sequence

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from resonance.errors import ResonanceError

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0  # from connecting (or the previous answer) to a complete request line + headers
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
MAX_CONNECTIONS = 256  # open connections per endpoint; beyond it the oldest idle one makes room
MAX_HEAD_BYTES = 16 * 1024  # request line + headers (h11's default; a longer head is a 400)
LINGER_IDLE_S = 2.0  # after refusing a body: drop the connection when the client pauses this long ...
LINGER_MAX_S = 10.0  # ... or after this long in all
SHUTDOWN_GRACE_S = 5  # on Ctrl+C, requests in flight get this long to finish


class _LingeringTransport:
    """The transport as uvicorn sees it, except that ``close()`` while the client is still sending a body
    the server refused lingers: the server stops writing (FIN) and discards what still arrives for a while,
    so the client reads the JSON error instead of a connection reset (a socket closed with unread data
    answers with RST, and the client's TCP stack drops the response it had not read yet)."""

    def __init__(self, transport: Any, protocol: GuardedH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_or_linger()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline, idle-first eviction and lingering close (see
    the module doc)."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.raw_transport = transport
        self.lingering = False
        self._linger_until = 0.0
        self._linger_timer: Optional[asyncio.TimerHandle] = None
        super().connection_made(_LingeringTransport(transport, self))
        self.idle_since = self.loop.time()
        self._head_timer: Optional[asyncio.TimerHandle] = None
        self._arm_head_timer()
        _make_room(self)

    # -- lingering close ---------------------------------------------------------------------------------

    def close_or_linger(self) -> None:
        """Close now, unless the client may still be sending a request body: then linger."""
        transport = self.raw_transport
        if self.lingering or transport.is_closing():
            return
        sending = self.cycle is not None and self.cycle.more_body and not self.cycle.disconnected
        if not sending:
            transport.close()
            return
        self.lingering = True
        self._disarm_head_timer()
        if transport.can_write_eof():
            transport.write_eof()  # the response is complete: FIN after it
        transport.resume_reading()
        self._linger_until = self.loop.time() + LINGER_MAX_S
        self._rearm_linger()

    def _rearm_linger(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        wait = min(LINGER_IDLE_S, self._linger_until - self.loop.time())
        self._linger_timer = self.loop.call_later(max(0.0, wait), self.raw_transport.close)

    def data_received(self, data: bytes) -> None:
        if self.lingering:  # the rest of a refused body: dropped as it arrives
            self._rearm_linger()
            return
        super().data_received(data)

    def eof_received(self) -> Optional[bool]:
        if self.lingering:
            self.raw_transport.close()
        return None

    @property
    def idle(self) -> bool:
        """No request in progress: waiting for (the rest of) a request head."""
        return self.cycle is None or self.cycle.response_complete

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a whole request head arrived
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        # Armed first: a pipelined request that super() starts at once disarms it again.
        self.idle_since = self.loop.time()
        if not self.lingering:
            self._arm_head_timer()
        super().on_response_complete()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.idle and not self.raw_transport.is_closing():
            self.raw_transport.close()


def _make_room(newcomer: GuardedH11Protocol) -> None:
    """Over the cap: close the connection idle the longest (never one mid-request), else the newcomer."""
    connections = newcomer.server_state.connections
    if len(connections) <= MAX_CONNECTIONS:
        return
    idle = [c for c in connections if c is not newcomer and isinstance(c, GuardedH11Protocol) and c.idle]
    victim = min(idle, key=lambda c: c.idle_since) if idle else newcomer
    log.warning("%d open connections: closing one that sent no request", len(connections))
    victim.raw_transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: the Front stops all its servers at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class Endpoint:
    """One listening socket: where, and with which TLS context (None: plain http)."""

    host: str
    port: int  # 0: any free port (Front.ports says which)
    ssl_context: Optional[ssl.SSLContext] = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"


def bind(host: str, port: int, flag: str = "--port") -> socket.socket:
    """A listening TCP socket; a port in use or a foreign address is one clear ResonanceError (``flag``: the
    option that chose the port, for its hint)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ResonanceError(
                f"port {port} on {host} is already in use (another `resonance serve`, or another program)",
                f"stop the other server, or pick a free port with {flag} (0 = any free port)",
            ) from exc
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise ResonanceError(
                f"cannot listen on {host}: not an address of this machine",
                "use --host 0.0.0.0 (every interface) or one of this machine's addresses",
            ) from exc
        if exc.errno == errno.EACCES:
            raise ResonanceError(
                f"not allowed to listen on port {port}", "ports below 1024 need root: use e.g. --port 8000"
            ) from exc
        raise ResonanceError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", "check --host and --port"
        ) from exc


class Front:
    """Binds every endpoint at construction (so a port in use fails before any model loads, and ``ports``
    is known for the banner), then serves an ASGI app on all of them in one event loop in ``run()``."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self._sockets: List[socket.socket] = []
        try:
            for endpoint in self.endpoints:
                self._sockets.append(bind(endpoint.host, endpoint.port))
        except BaseException:
            self.close()
            raise
        self._servers: List[_Server] = []

    @property
    def ports(self) -> List[int]:
        return [int(sock.getsockname()[1]) for sock in self._sockets]

    def _server(self, app: Any, endpoint: Endpoint) -> _Server:
        config = uvicorn.Config(
            app,
            http=GuardedH11Protocol,
            ws="none",
            lifespan="off",
            loop="asyncio",
            log_config=None,  # the resonance CLI configures logging (one escaped line per record)
            access_log=False,  # the app logs each request itself, lengths only
            proxy_headers=False,  # nothing sits in front of this server: X-Forwarded-* are a client's lies
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        )
        config.load()
        config.ssl = endpoint.ssl_context  # a prepared context (uvicorn would build one from file paths)
        return _Server(config)

    def run(self, app: Any, *others: Callable[[], Awaitable[None]]) -> None:
        """Serve ``app`` until Ctrl+C or SIGTERM; ``others`` are coroutine functions run in the same event
        loop (cancelled when the HTTP servers stop)."""
        asyncio.run(self._serve(app, others))

    async def _serve(self, app: Any, others: Sequence[Callable[[], Awaitable[None]]]) -> None:
        self._servers = [self._server(app, endpoint) for endpoint in self.endpoints]
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop)
        beside = [asyncio.ensure_future(other()) for other in others]
        try:
            await asyncio.gather(
                *(server.serve(sockets=[sock]) for server, sock in zip(self._servers, self._sockets))
            )
        finally:  # the HTTP servers stopped (Ctrl+C): so do the others
            for task in beside:
                task.cancel()
            await asyncio.gather(*beside, return_exceptions=True)

    def stop(self) -> None:
        """Stop accepting and finish what is in flight (a second call stops at once)."""
        for server in self._servers:
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
