"""At most N transcriptions at once, on N fixed threads: the capacity every front end shares.

The HTTP app takes a slot per request today; a Wyoming handler (or an ASGI gate that holds a slot before it
reads a body) will share the same object, so the device's limit holds whatever the protocol.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from resonance.errors import ResonanceError

T = TypeVar("T")


class Busy(ResonanceError):
    """Every slot stayed taken for the queue timeout (HTTP: 503 with Retry-After)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the server is busy transcribing other recordings", f"retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class TranscriptionSlots:
    """At most ``n`` transcriptions at once, always on the same ``n`` threads; a caller waits ``timeout``
    seconds for a slot, then gets :class:`Busy`.

    A pool rather than a semaphore around waitress's own threads: onnxruntime and malloc keep per-thread
    buffers, and letting every waitress thread transcribe in turn grew the server by ~45 MB per thread that
    ever ran the model (measured with `resonance loadtest`, 8 clients). The pool bounds that by ``n``.
    """

    def __init__(self, n: int, timeout: float) -> None:
        self._semaphore = threading.BoundedSemaphore(n)
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="transcribe")
        self._timeout = timeout
        self._lock = threading.Lock()
        self._mean_s = 1.0  # running mean of transcription time, for Retry-After

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` on a transcription thread; :class:`Busy` when no slot frees up in time."""
        self._acquire()
        started = time.perf_counter()
        try:
            return self._pool.submit(work).result()
        finally:
            self._release(time.perf_counter() - started)

    def _acquire(self) -> None:
        acquired = (
            self._semaphore.acquire(blocking=False)
            if self._timeout <= 0
            else self._semaphore.acquire(timeout=self._timeout)
        )
        if not acquired:
            raise Busy(min(60, max(1, math.ceil(self._mean_s))))

    def _release(self, seconds: float) -> None:
        with self._lock:
            self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
        self._semaphore.release()
