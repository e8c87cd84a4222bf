"""The network side: sockets bound first, then uvicorn (asyncio, h11) serving the gate until Ctrl+C.

The only module that knows uvicorn. What it adds to uvicorn for a hostile LAN (issue #12):

* a **deadline for the request head**: uvicorn waits forever for the first request of a connection, and a
  client that sends one header byte every few seconds keeps it open; here a connection that has not sent a
  whole request head ``HEAD_TIMEOUT_S`` after connecting (or after its previous answer) is closed;
* a **cap on open connections that cannot starve /health**: past ``MAX_CONNECTIONS`` the oldest connection
  that is not in the middle of a request is closed to make room, instead of refusing the newcomer
  (uvicorn's own ``limit_concurrency`` answers 503 to everyone once idle sockets fill it);
* idle keep-alive connections closed after ``KEEP_ALIVE_S``;
* a **lingering close** after refusing a body the client is still sending, so it reads the error;
* on an HTTPS port, a **redirect for plain http**: a caregiver who types ``http://`` before the HTTPS
  address gets a ``308`` to ``https://`` instead of an empty reply (asyncio's TLS layer drops a connection
  whose first bytes are not a TLS handshake before anything could answer it).

Several endpoints (sockets, each plain or TLS) can be served by one event loop, with other servers (e.g. a
Wyoming server) beside them: ``Front([Endpoint(...), ...]).run(app, other_coroutine_function, ...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import signal
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Sequence

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
TLS_HANDSHAKE = b"\x16"  # a TLS client's first byte (a handshake record); plain http starts with a letter


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
        self.stopping = False
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
        if not sending or self.stopping:
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

    def shutdown(self) -> None:
        """The server stops (Ctrl+C): a lingering connection closes now instead of holding the stop up to
        the graceful timeout (the client has its answer; uvicorn would log the wait as an ERROR)."""
        self.stopping = True
        if self.lingering:
            self.raw_transport.close()
            return
        super().shutdown()

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


class _HttpsServer(_Server):
    """An HTTPS endpoint that accepts its connections itself, to look at each one's first byte before TLS
    begins: a TLS handshake goes to uvicorn's protocol over TLS, as ``create_server(ssl=...)`` would do,
    and plain http gets a redirect to the same address over https (:func:`_redirect_to_https`).

    Connections still in that first phase (no byte yet, or in the TLS handshake) are capped like open ones:
    past ``MAX_CONNECTIONS`` the oldest of them is closed for the newcomer."""

    def __init__(self, config: uvicorn.Config, ssl_context: ssl.SSLContext) -> None:
        super().__init__(config)
        self._ssl_context = ssl_context
        self._accepting: Optional[asyncio.Future] = None
        self._opening: Dict[asyncio.Future, socket.socket] = {}  # in insertion order: oldest first

    async def startup(self, sockets: Optional[List[socket.socket]] = None) -> None:
        await super().startup(sockets=[])  # uvicorn's state and lifespan, but no asyncio server of its own
        listener = (sockets or [])[0]
        listener.setblocking(False)
        self._accepting = asyncio.ensure_future(self._accept(listener))

    async def shutdown(self, sockets: Optional[List[socket.socket]] = None) -> None:
        for task in [self._accepting, *self._opening]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._accepting, *self._opening] if t], return_exceptions=True)
        await super().shutdown(sockets=sockets)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. out of file descriptors: let some close, then go on
                log.warning("cannot accept a connection: %s", exc)
                await asyncio.sleep(0.5)
                continue
            conn.setblocking(False)
            task = asyncio.ensure_future(self._open(conn))
            self._opening[task] = conn
            task.add_done_callback(self._opened)
            if len(self._opening) > MAX_CONNECTIONS:
                next(iter(self._opening)).cancel()

    def _opened(self, task: asyncio.Future) -> None:
        conn = self._opening.pop(task, None)
        failed = task.cancelled() or task.exception() is not None
        if failed and conn is not None:
            conn.close()
        if not task.cancelled() and task.exception() is not None:
            log.debug("connection not opened: %s", task.exception())

    async def _open(self, conn: socket.socket) -> None:
        """TLS for a TLS client, a redirect for a plain http one, nothing for one that sends nothing."""
        loop = asyncio.get_running_loop()
        first = await asyncio.wait_for(_peek(loop, conn), HEAD_TIMEOUT_S)
        if first == TLS_HANDSHAKE:
            await loop.connect_accepted_socket(
                self._protocol, sock=conn, ssl=self._ssl_context, ssl_handshake_timeout=HEAD_TIMEOUT_S
            )
        else:
            if first:
                await _redirect_to_https(loop, conn)
            conn.close()

    def _protocol(self) -> asyncio.Protocol:
        """What uvicorn's ``create_server`` would make for this connection."""
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The connection's first byte, left in the socket for TLS to read (b"": closed before sending)."""
    readable = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv(1, socket.MSG_PEEK)


_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_TARGET = re.compile(r"^/[\x21-\x7e]*$")  # origin-form, printable ASCII without spaces


async def _redirect_to_https(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    """Answer a plain http request with 308 to the same host and path over https (400 when its head has no
    usable Host). Nothing of the request is served: a body is read only to be dropped (lingering close)."""
    head = await asyncio.wait_for(_request_head(loop, conn), HEAD_TIMEOUT_S)
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    target = parts[1] if len(parts) == 3 and _TARGET.match(parts[1]) else "/"
    hosts = [line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("host:")]
    if len(hosts) == 1 and _HOST.match(hosts[0]):
        location = f"https://{hosts[0]}{target}"
        status, text = "308 Permanent Redirect", f"This port speaks HTTPS: {location}\n"
        extra = f"Location: {location}\r\n"
    else:
        status, text, extra = "400 Bad Request", "This port speaks HTTPS: use https:// in the address.\n", ""
    body = text.encode("ascii")
    reply = (
        f"HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + body
    await asyncio.wait_for(loop.sock_sendall(conn, reply), HEAD_TIMEOUT_S)
    log.info("plain http on an HTTPS port: %s", status)
    await _drain_before_close(loop, conn)


async def _request_head(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < MAX_HEAD_BYTES:
        chunk = await loop.sock_recv(conn, 4096)
        if not chunk:
            break
        head += chunk
    return head


async def _drain_before_close(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    """FIN after the answer, then drop what the client still sends for a while: closing a socket with
    unread data sends a reset, and the client's TCP stack would throw away the answer it had not read."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
    deadline = loop.time() + LINGER_MAX_S
    while loop.time() < deadline:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(conn, 65536), LINGER_IDLE_S)
        except (asyncio.TimeoutError, OSError):
            return
        if not chunk:
            return


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
        if endpoint.ssl_context is not None:
            return _HttpsServer(config, endpoint.ssl_context)
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
