"""Is a recording usable for training? Level, silence, clipping and length, shared by `check` and `record`.

Speech is found by frame energy relative to the clip's own background (no VAD model): a 20 ms frame is
"active" when it is well above the quietest tenth of the clip. That copes with both studio-quiet and noisy
rooms, and needs only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np

FRAME_SECONDS = 0.02  # 20 ms frames: shorter than a syllable, long enough for a stable energy
MIN_SECONDS = 0.3  # shorter than any spoken word: a mis-click
MAX_SECONDS = 30.0  # Whisper sees at most 30 s; longer clips are cut, their label no longer matches
LONG_SECONDS = 5.0  # the guide's phrases are short; a long clip is usually a recording left running
SILENT_DB = -50.0  # loudest frame below this: nothing was recorded (muted or unplugged microphone)
QUIET_DB = -35.0  # loudest frame below this: speech barely above the noise of a 16-bit recording
MIN_ACTIVE_SECONDS = 0.06  # less sound than this above the background is a click, not speech
EDGE_SILENCE_SECONDS = 1.0  # longer silence before/after speech is worth trimming
CLIP_LEVEL = 0.999  # |sample| at or above this counts as full scale (int16 max is 0.99997)
CLIP_WARN_FRACTION = 0.0005  # ~8 full-scale samples per second at 16 kHz: audible distortion likely
CLIP_ERROR_FRACTION = 0.01  # 1% of samples flattened: the waveform is badly distorted
_MIN_CONTRAST_DB = 10.0  # loudest vs background: below this, speech cannot be told from background
_DB_EPS = 1e-10  # avoids log(0) on digital silence (-200 dB)


@dataclass(frozen=True)
class Levels:
    """Measurements of one clip."""

    duration: float  # seconds
    peak_db: float  # RMS of the loudest 20 ms frame, dB re full scale
    floor_db: float  # RMS of the quietest tenth of the frames (the background), dBFS
    speech_start: float  # seconds to the first active frame (== duration when none)
    speech_end: float  # seconds to the end of the last active frame (0 when none)
    active_seconds: float  # total duration of active frames
    clipped_fraction: float  # share of samples at full scale


@dataclass(frozen=True)
class Finding:
    """One problem with a clip: severity is 'error' (do not train on it) or 'warning'."""

    severity: str
    code: str
    message: str
    fix: str


def frame_db(samples: np.ndarray, rate: int) -> np.ndarray:
    """RMS level of consecutive 20 ms frames in dBFS (one frame for clips shorter than that)."""
    size = max(1, int(rate * FRAME_SECONDS))
    count = max(1, len(samples) // size)
    frames = np.zeros((count, size), np.float32)
    usable = samples[: count * size]
    frames.reshape(-1)[: len(usable)] = usable
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return 20.0 * np.log10(rms + _DB_EPS)


def active_frames(db: np.ndarray) -> np.ndarray:
    """Boolean mask of frames that hold sound clearly above the clip's background."""
    peak, floor = float(db.max()), float(np.percentile(db, 10))
    if peak < SILENT_DB:
        return np.zeros(len(db), bool)
    if peak - floor < _MIN_CONTRAST_DB:  # steady sound throughout: all of it counts
        return db > SILENT_DB
    threshold = max(floor + 0.4 * (peak - floor), peak - 35.0)
    return db > threshold


def measure(samples: np.ndarray, rate: int) -> Levels:
    samples = np.asarray(samples, dtype=np.float32)
    duration = len(samples) / rate
    if len(samples) == 0:
        return Levels(0.0, -200.0, -200.0, 0.0, 0.0, 0.0, 0.0)
    db = frame_db(samples, rate)
    active = np.flatnonzero(active_frames(db))
    frame = len(samples) / len(db)  # samples per frame, as framed
    start = active[0] * frame / rate if len(active) else duration
    end = min(duration, (active[-1] + 1) * frame / rate) if len(active) else 0.0
    return Levels(
        duration=duration,
        peak_db=float(db.max()),
        floor_db=float(np.percentile(db, 10)),
        speech_start=float(start),
        speech_end=float(end),
        active_seconds=float(len(active) * frame / rate),
        clipped_fraction=float(np.mean(np.abs(samples) >= CLIP_LEVEL)),
    )


def trim_silence(samples: np.ndarray, rate: int, pad: float = 0.25) -> np.ndarray:
    """Cut silence before and after the speech, keeping ``pad`` seconds so soft onsets survive."""
    levels = measure(samples, rate)
    if levels.active_seconds == 0:
        return samples[:0]
    first = max(0, int((levels.speech_start - pad) * rate))
    last = min(len(samples), int((levels.speech_end + pad) * rate))
    return samples[first:last]


def level_findings(levels: Levels) -> List[Finding]:
    """Silence, loudness, clipping and length problems of one clip, worst first."""
    found = _silence_findings(levels)
    found += _clipping_findings(levels)
    found += _length_findings(levels)
    return sorted(found, key=lambda f: f.severity != "error")


def _silence_findings(levels: Levels) -> List[Finding]:
    redo = "re-record it (check the microphone is on and close to the speaker), or remove it from labels.json"
    if levels.duration == 0:
        return [Finding("error", "empty-audio", "the audio has no samples", redo)]
    if levels.peak_db < SILENT_DB:
        loudest = (
            "every sample is zero"
            if levels.peak_db < -150
            else f"the loudest moment is {levels.peak_db:.0f} dBFS"
        )
        return [Finding("error", "silent", f"silent: {loudest}", redo)]
    if levels.active_seconds < MIN_ACTIVE_SECONDS:
        message = f"almost nothing above the background ({levels.active_seconds:.2f} s of sound)"
        return [Finding("error", "mostly-silent", message, redo)]
    found = []
    if levels.peak_db < QUIET_DB:
        found.append(
            Finding(
                "warning",
                "quiet",
                f"very quiet: the loudest moment is {levels.peak_db:.0f} dBFS",
                "record closer to the mouth or raise the microphone gain",
            )
        )
    leading, trailing = levels.speech_start, levels.duration - levels.speech_end
    for where, seconds in (("before", leading), ("after", trailing)):
        if seconds > EDGE_SILENCE_SECONDS:
            found.append(
                Finding(
                    "warning",
                    f"silence-{'start' if where == 'before' else 'end'}",
                    f"{seconds:.1f} s of silence {where} the speech",
                    "trim it (`resonance data record` trims automatically)",
                )
            )
    return found


def _clipping_findings(levels: Levels) -> List[Finding]:
    fraction = levels.clipped_fraction
    if fraction <= CLIP_WARN_FRACTION:
        return []
    severity = "error" if fraction > CLIP_ERROR_FRACTION else "warning"
    return [
        Finding(
            severity,
            "clipping",
            f"clipped: {fraction:.1%} of samples at full scale (distorted)",
            "lower the microphone gain or move it further away, then re-record",
        )
    ]


def _length_findings(levels: Levels) -> List[Finding]:
    seconds = levels.duration
    if 0 < seconds < MIN_SECONDS:
        return [
            Finding(
                "error",
                "too-short",
                f"too short: {seconds:.2f} s (at least {MIN_SECONDS} s)",
                "re-record the whole phrase, or remove the entry",
            )
        ]
    if seconds > MAX_SECONDS:
        return [
            Finding(
                "error",
                "too-long",
                f"too long: {seconds:.1f} s (Whisper hears at most {MAX_SECONDS:.0f} s)",
                "cut it into phrases of a few seconds, one entry each",
            )
        ]
    if seconds > LONG_SECONDS:
        return [
            Finding(
                "warning",
                "long",
                f"long for a phrase: {seconds:.1f} s",
                "fine if the phrase really is that long; otherwise trim the silence or split it",
            )
        ]
    return []
