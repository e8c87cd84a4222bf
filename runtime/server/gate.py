"""The ASGI gate: every request is judged from its headers alone, before one byte of its body is read.

In order: the Host is one of this machine's (DNS rebinding), a browser's Origin is the server's own page
(CSRF), the bearer token is right for protected routes, a declared Content-Length is within the upload cap,
and, for requests that decode audio (``slots.SLOT_ROUTES``), a transcription slot is free within the queue
timeout counted from the request's arrival (503 + Retry-After otherwise). Refusals are the API's JSON errors
and close the connection when a body was announced, so it is never read. Only then is the Flask app called
(through a2wsgi): audio requests on the slot threads, everything else (/health, the page) on a few light
threads that transcriptions never occupy.

While the app reads a body, the gate counts it (chunked uploads too: 413 past the cap), and drops a client
that stops sending for ``BODY_IDLE_TIMEOUT_S`` or takes longer than ``BODY_TIMEOUT_S`` in all (408): a slot
is never held by a stalled upload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from a2wsgi import WSGIMiddleware

from resonance.runtime.server.auth import authorized, is_open_path
from resonance.runtime.server.context import ServerContext
from resonance.runtime.server.errors import ApiError, error_body, too_large_error, unauthorized_error
from resonance.runtime.server.hosts import HostPolicy, same_origin
from resonance.runtime.server.slots import SLOT_HELD, SLOT_ROUTES, Busy

log = logging.getLogger(__name__)

Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LIGHT_THREADS = 4  # threads for everything but transcription (/health, /patients, the page): all quick
BODY_IDLE_TIMEOUT_S = 15.0  # a client that sends no body byte for this long is dropped (408)
BODY_TIMEOUT_S = 60.0  # a whole upload must arrive within this (25 MB at 3.5 Mbit/s; a clip is ~1 MB)
DISCONNECT: Message = {"type": "http.disconnect"}


class _WsgiOn(WSGIMiddleware):
    """a2wsgi's WSGI-in-ASGI adapter running on a given thread pool (a2wsgi makes its own otherwise)."""

    def __init__(self, app: Any, executor: Any) -> None:
        super().__init__(app, workers=1)
        self.executor.shutdown(wait=False)  # never started a thread
        self.executor = executor


def _environ_marks(app: Any, slot_held: bool) -> Any:
    """The Flask app, told what the gate knows about the request."""

    def marked(environ: Dict[str, Any], start_response: Any) -> Any:
        # a2wsgi's input stream ends where the request body ends (chunked too): werkzeug may trust it
        # rather than treat a body without Content-Length as empty.
        environ["wsgi.input_terminated"] = True
        environ[SLOT_HELD] = slot_held
        return app(environ, start_response)

    return marked


class _Head:
    """What the gate reads from a request: its method, path and the few headers it judges."""

    def __init__(self, scope: Dict[str, Any]) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.scheme: str = scope.get("scheme", "http")
        server = scope.get("server") or (None, None)
        self.local_address: Optional[str] = server[0]
        client = scope.get("client") or ("-", 0)
        self.client = str(client[0])
        self.arrived = time.monotonic()
        headers: Dict[str, List[str]] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        self.hosts = headers.get("host", [])
        self.origin = (headers.get("origin") or [None])[0]
        self.authorization = ", ".join(headers.get("authorization", []))
        lengths = headers.get("content-length", [])
        self.content_length: Optional[int] = int(lengths[0]) if lengths and lengths[0].isdigit() else None
        self.chunked = any("chunked" in v.lower() for v in headers.get("transfer-encoding", []))

    @property
    def host(self) -> Optional[str]:
        return self.hosts[0] if self.hosts else None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class Gate:
    """The ASGI app the listener serves: checks, then the Flask app on the right threads."""

    def __init__(self, wsgi_app: Any, context: ServerContext, hosts: HostPolicy) -> None:
        self.context = context
        self.hosts = hosts
        self.slots = context.slots
        self.max_body = context.device_config.max_upload_bytes
        self._light = WSGIMiddleware(_environ_marks(wsgi_app, False), workers=LIGHT_THREADS)
        self._heavy = _WsgiOn(_environ_marks(wsgi_app, True), self.slots.executor)

    async def __call__(self, scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no websockets; lifespan events are turned off in the listener
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        head = _Head(scope)
        refusal = self.check(head)
        if refusal is None and (head.method, head.path) in SLOT_ROUTES:
            try:
                await self.slots.acquire(self.slots.deadline(head.arrived))
            except Busy as busy:
                refusal = ApiError(
                    503, "busy", busy.message, busy.hint, {"Retry-After": str(busy.retry_after_s)}
                )
            else:
                started = time.monotonic()
                try:
                    await self._forward(self._heavy, head, scope, receive, send)
                finally:
                    self.slots.release(time.monotonic() - started)
                return
        if refusal is not None:
            self._log_refusal(head, refusal)
            await send_error(send, refusal, close=head.has_body)
            return
        await self._forward(self._light, head, scope, receive, send)

    def check(self, head: _Head) -> Optional[ApiError]:
        """Why the request is refused from its headers alone, or None."""
        if len(head.hosts) > 1 or not self.hosts.allows(head.host, head.local_address):
            return ApiError(
                403,
                "host_not_allowed",
                f"this server does not answer to the name '{(head.host or '')[:80]}'",
                "use the address `resonance serve` printed; to reach it by another name start it with "
                "--allow-host NAME",
            )
        if head.origin is not None and not same_origin(head.origin, head.scheme, head.host):
            return ApiError(
                403,
                "cross_origin",
                f"requests from the web page at '{head.origin[:80]}' are not allowed",
                "use the server's own page (its address printed by `resonance serve`), or an app, "
                "which sends no Origin",
            )
        token = self.context.settings.auth_token
        if not is_open_path(head.path) and not authorized(head.authorization, token):
            return unauthorized_error(head.authorization)
        if head.content_length is not None and head.content_length > self.max_body:
            return too_large_error(self.context.device_config.max_upload_mb)
        return None

    async def _forward(
        self, app: Any, head: _Head, scope: Dict[str, Any], receive: Receive, send: Send
    ) -> None:
        body = _MeteredBody(receive, self.max_body, self.context.device_config.max_upload_mb)
        reply = _Reply(send, body, head)
        await app(scope, body.receive, reply.send)
        if reply.replaced is not None:
            self._log_refusal(head, reply.replaced)

    def _log_refusal(self, head: _Head, refusal: ApiError) -> None:
        level = logging.WARNING if refusal.code in ("host_not_allowed", "cross_origin") else logging.INFO
        log.log(
            level,
            "%s %s %d refused (%s) client=%s host=%s origin=%s",
            head.method,
            head.path,
            refusal.status,
            refusal.code,
            head.client,
            head.host,
            head.origin,
        )


class _MeteredBody:
    """The request body as the app reads it: counted against the cap, and on a clock."""

    def __init__(self, receive: Receive, limit: int, limit_mb: float) -> None:
        self._receive = receive
        self.limit = limit
        self.limit_mb = limit_mb
        self.received = 0
        self.complete = False
        self.problem: Optional[ApiError] = None
        self._deadline = time.monotonic() + BODY_TIMEOUT_S

    async def receive(self) -> Message:
        if self.problem is not None or self.complete:
            return DISCONNECT
        wait = min(BODY_IDLE_TIMEOUT_S, self._deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(self._receive(), max(0.0, wait))
        except asyncio.TimeoutError:
            self.problem = ApiError(
                408,
                "request_timeout",
                "the upload stalled or took too long",
                f"send the whole recording within {BODY_TIMEOUT_S:g} s, without pauses over "
                f"{BODY_IDLE_TIMEOUT_S:g} s",
            )
            return DISCONNECT
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:  # a chunked upload (no Content-Length) that goes on and on
                self.problem = too_large_error(self.limit_mb)
                return DISCONNECT
            if not message.get("more_body", False):
                self.complete = True
        return message


class _Reply:
    """The app's response, unless the body broke a rule: then the gate's error replaces it."""

    def __init__(self, send: Send, body: _MeteredBody, head: _Head) -> None:
        self._send = send
        self._body = body
        self._head = head
        self.replaced: Optional[ApiError] = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self._body.problem is not None:
                self.replaced = self._body.problem
                await send_error(self._send, self.replaced, close=True)
                return
            if self._head.has_body and not self._body.complete:
                # Answered before the body was read (404, 405 ...): close rather than read what is left.
                message = dict(message, headers=[*message.get("headers", []), (b"connection", b"close")])
        elif self.replaced is not None:
            return  # the app's own body, after the gate's error went out instead
        await self._send(message)


async def send_error(send: Send, error: ApiError, close: bool = False) -> None:
    """One JSON error reply, as the Flask app would send it; ``close`` when a body is left unread."""
    body = json.dumps(error_body(error.status, error.code, error.message, error.hint), ensure_ascii=False)
    data = body.encode("utf-8")
    headers: List[Tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
    ]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
