"""At most N transcriptions at once, on N fixed threads: the capacity every front end shares.

A request takes a slot *before* its body is read: the HTTP gate (gate.py) waits for one on the event loop
(``await slots.acquire(deadline)``, no thread used while waiting) and then runs the whole request, upload
parsing and audio decoding included, on one of the slot threads (``slots.executor``). Code that is not on
the event loop (an in-process Flask app, a test) calls ``slots.run(work)``, which waits on a thread. Both
kinds of waiter share one first-come-first-served queue, so the device's limit holds whatever the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Deque, Optional, TypeVar

from resonance.errors import ResonanceError

T = TypeVar("T")

THREAD_PREFIX = "transcribe"  # the slot threads' names (tests and logs recognise them)
# The requests that run on a slot: every one that decodes audio. The gate takes the slot before reading
# their bodies; a new endpoint that decodes uploads belongs here.
SLOT_ROUTES = frozenset(
    {("POST", "/transcribe"), ("POST", "/v1/audio/transcriptions"), ("POST", "/feedback")}
)
SLOT_HELD = "resonance.slot_held"  # WSGI environ key: the request holds a slot and runs on a slot thread


class Busy(ResonanceError):
    """Every slot stayed taken for the queue timeout (HTTP: 503 with Retry-After)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the server is busy transcribing other recordings", f"retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class _Waiter:
    """One caller queued for a slot; ``wake`` is called (under the slots' lock) when it is handed one."""

    __slots__ = ("granted", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.granted = False
        self.wake = wake


class TranscriptionSlots:
    """At most ``n`` transcriptions at once, always on the same ``n`` threads; a caller waits until its
    deadline (``timeout`` seconds after it arrived) for a slot, then gets :class:`Busy`.

    Fixed threads rather than whichever thread served the request: onnxruntime and malloc keep per-thread
    buffers, and letting every server thread transcribe in turn grew the server by ~45 MB per thread that
    ever ran the model (measured with `resonance loadtest`, 8 clients). The pool bounds that by ``n``.
    """

    def __init__(self, n: int, timeout: float) -> None:
        self.size = n
        self.timeout = timeout
        self.executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix=THREAD_PREFIX)
        self._lock = threading.Lock()
        self._free = n
        self._waiters: Deque[_Waiter] = deque()
        self._mean_s = 1.0  # running mean of how long a slot is held, for Retry-After

    # -- taking and giving back a slot -------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return self.size - self._free

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def deadline(self, arrived: Optional[float] = None) -> float:
        """The monotonic time until which a caller that arrived at ``arrived`` (default: now) may wait."""
        return (time.monotonic() if arrived is None else arrived) + self.timeout

    async def acquire(self, deadline: float) -> None:
        """Take a slot on the event loop, waiting (no thread held) until ``deadline``; :class:`Busy` then."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def wake() -> None:
            # A closed loop (the server shutting down) has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

        waiter = self._enqueue(wake)
        if waiter is None:
            return
        try:
            await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            if not self._withdraw(waiter):
                raise self.busy() from None
            # handed a slot at the deadline itself: the caller holds it
        except asyncio.CancelledError:  # the client went away while waiting
            if self._withdraw(waiter):
                self.release(0.0)
            raise

    def acquire_blocking(self, deadline: float) -> None:
        """Take a slot from a thread, waiting until ``deadline``; :class:`Busy` then."""
        event = threading.Event()
        waiter = self._enqueue(event.set)
        if waiter is None:
            return
        if not event.wait(max(0.0, deadline - time.monotonic())) and not self._withdraw(waiter):
            raise self.busy()

    def release(self, held_s: float) -> None:
        """Give a slot back (``held_s``: how long it was held); the longest waiting caller gets it."""
        with self._lock:
            if held_s > 0:
                self._mean_s = 0.8 * self._mean_s + 0.2 * held_s
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.granted = True
                waiter.wake()
            else:
                self._free += 1

    def busy(self) -> Busy:
        return Busy(min(60, max(1, math.ceil(self._mean_s))))

    def _enqueue(self, wake: Callable[[], None]) -> Optional[_Waiter]:
        """None when a slot was free (taken); else the caller's place in the queue. Busy when no wait allowed."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return None
            if self.timeout <= 0:
                raise self.busy()
            waiter = _Waiter(wake)
            self._waiters.append(waiter)
            return waiter

    def _withdraw(self, waiter: _Waiter) -> bool:
        """Leave the queue; True when the slot had been handed over already (the caller now holds it)."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            return False

    # -- running work ----------------------------------------------------------------------------------------

    def run(self, work: Callable[[], T], held: bool = False) -> T:
        """``work()`` on a slot thread; :class:`Busy` when no slot frees up in time.

        ``held``: the caller already holds a slot and runs on a slot thread (the gate's requests), so the
        work runs right here.
        """
        if held:
            return work()
        self.acquire_blocking(self.deadline())
        started = time.monotonic()
        try:
            return self.executor.submit(work).result()
        finally:
            self.release(time.monotonic() - started)

    def close(self) -> None:
        self.executor.shutdown(wait=False)
