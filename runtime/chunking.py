"""Where to cut audio longer than the model's window: at a pause near each window's end, not blindly.

A blind cut every ``window_seconds`` lands inside a word, and the model then mishears (or repeats) both
halves. Each window is cut instead at the quietest short frame of its second half; the next one starts
there. Windows never overlap, and each is decoded on its own (no previous text as a prompt).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

CUT_FRAME_S = 0.025  # energy is compared per 25 ms frame: shorter than a pause, longer than a pitch period
# The quietest frame must be at most this share of the searched stretch's median energy to count as a pause;
# otherwise (steady sound, or silence throughout) the window is cut at its limit, as large as it can be.
PAUSE_ENERGY_RATIO = 0.5


def window_spans(samples: np.ndarray, window_samples: int, sample_rate: int) -> List[Tuple[int, int]]:
    """``(start, end)`` sample spans, each at most ``window_samples`` long, that cover ``samples`` in order.

    Audio that fits one window is one span (none when empty); longer audio is cut at a pause near each
    window's end (``quietest_cut``).
    """
    # The whole second half: phrases of a few seconds leave their pause anywhere in a 5 s window (measured:
    # three phrases of 2-3 s with 0.5 s between, a search of the last 1.5 s missed the first pause), and a
    # window keeps at least half its length.
    search = window_samples // 2
    frame = max(1, round(CUT_FRAME_S * sample_rate))
    spans: List[Tuple[int, int]] = []
    start = 0
    while samples.size - start > window_samples:
        limit = start + window_samples
        end = quietest_cut(samples, limit - search, limit, frame)
        spans.append((start, end))
        start = end
    if start < samples.size:
        spans.append((start, samples.size))
    return spans


def quietest_cut(samples: np.ndarray, low: int, high: int, frame: int) -> int:
    """The middle of the lowest-energy ``frame`` in ``samples[low:high]``, or ``high`` when none is a pause."""
    count = (high - low) // frame
    if count < 1:
        return high
    first = high - count * frame  # frames end at ``high``, so the latest one touches the limit
    stretch = samples[first:high].astype(np.float64).reshape(count, frame)
    energy = np.mean(np.square(stretch), axis=1)
    quietest = int(np.argmin(energy))
    if not energy[quietest] < PAUSE_ENERGY_RATIO * float(np.median(energy)):
        return high
    return first + quietest * frame + frame // 2
