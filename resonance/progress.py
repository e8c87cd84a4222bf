"""Progress for the long commands (export, model import, data convert, eval), on stderr.

Two shapes: :func:`progress` wraps a loop over items (a bar: tqdm where it is installed, as with [train]; else a
line every few seconds, so a Jetson runtime needs nothing more), and :class:`Stages` names the steps of a job
that has no items to count (export: merge, ONNX, quantise, parity) with the time each took.

Torch-free and Python-3.8-clean: the runtime's eval commands use it on a Jetson.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")

TEXT_EVERY_S = 5.0  # without tqdm: a progress line at most this often (and at the end)


def progress(
    items: Iterable[T],
    desc: str,
    total: Optional[int] = None,
    unit: str = "item",
    stream: Optional[TextIO] = None,
    use_tqdm: Optional[bool] = None,
) -> Iterator[T]:
    """Yield ``items`` while showing how far the loop is. ``use_tqdm`` None: tqdm when it can be imported."""
    stream = stream or sys.stderr
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    tqdm = _tqdm() if use_tqdm is not False else None
    if tqdm is not None:
        yield from tqdm(items, desc=desc, total=total, unit=unit, file=stream, dynamic_ncols=True, leave=True)
        return
    yield from _text_progress(items, desc, total, unit, stream)


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _text_progress(
    items: Iterable[T], desc: str, total: Optional[int], unit: str, stream: TextIO
) -> Iterator[T]:
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= TEXT_EVERY_S:
            last = now
            print(f"{desc}: {_count(done, total, unit)}, {now - started:.0f} s", file=stream, flush=True)
    print(
        f"{desc}: {_count(done, total, unit)} in {time.monotonic() - started:.0f} s", file=stream, flush=True
    )


def _count(done: int, total: Optional[int], unit: str) -> str:
    units = unit if unit.endswith("s") or (total or done) == 1 else unit + "s"
    return f"{done}/{total} {units}" if total else f"{done} {units}"


class Stages:
    """Numbered steps of one job: ``stages.start("exporting to ONNX")`` prints ``export [2/5] exporting to ONNX``
    and, at the next start (or ``done()``), how long the previous step took."""

    def __init__(self, job: str, total: int, stream: Optional[TextIO] = None, enabled: bool = True) -> None:
        self.job = job
        self.enabled = enabled  # False: silent (a library call that did not ask for progress)
        self.total = total
        self.stream = stream or sys.stderr
        self.index = 0
        self._started = time.monotonic()
        self._step_started: Optional[float] = None
        self._step = ""

    def start(self, what: str) -> None:
        self._finish_step()
        self.index += 1
        self._step, self._step_started = what, time.monotonic()
        self._say(f"{self.job} [{self.index}/{self.total}] {what} ...")

    def done(self, summary: str = "") -> None:
        self._finish_step()
        tail = f": {summary}" if summary else ""
        self._say(f"{self.job} done in {time.monotonic() - self._started:.0f} s{tail}")

    def _finish_step(self) -> None:
        if self._step_started is not None:
            took = time.monotonic() - self._step_started
            self._say(f"{self.job} [{self.index}/{self.total}] {self._step}: {took:.1f} s")
            self._step_started = None

    def _say(self, line: str) -> None:
        if self.enabled:
            print(line, file=self.stream, flush=True)
