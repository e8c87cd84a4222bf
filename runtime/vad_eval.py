"""`resonance eval vad`: how well each VAD cuts a stream of known utterances, in a quiet room and in noise.

1. The recordings of DATA (one utterance each, e.g. speaker A's take2), in a seeded order, scaled together so
   that they average SPEECH_DBFS (a voice about a metre from a microphone), joined by pauses of PAUSE_S:
   longer than `listen`'s end of utterance (1 s), so each recording should come out as one utterance.
2. Each condition adds one noise to that same stream: room noise (pink) at several signal-to-noise ratios,
   mains hum, babble (many voices made from the recordings themselves, reversed and pitch-shifted: speech-like
   sound without words, as from a TV or a room of people), knocks and clicks in the pauses.
3. Each VAD gets the stream in the 100 ms blocks a microphone gives. Each utterance it returns is compared with
   the known boundaries of the recordings: per recording,
   found      one utterance covers at least FOUND_COVERAGE of it and no other recording,
   cut short  one utterance, covering less (a lost onset or ending),
   split      several utterances (the phrase is transcribed in pieces),
   merged     an utterance spans it and another recording (counted for each),
   missed     no utterance overlaps it;
   false alarms: utterances that overlap no recording (noise transcribed as speech, or nothing).

Everything is seeded: the same data and seed give the same streams and counts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from resonance.constants import SAMPLE_RATE
from resonance.runtime.vad import VAD_KINDS, VadOptions, check_vad, level_dbfs, make_segmenter

SPEECH_DBFS = -25.0  # average level of the recordings in the stream
QUIET_ROOM_DBFS = -65.0  # the noise floor of a quiet room, under every other noise
PAUSE_S = (1.5, 4.0)  # pauses between recordings, drawn uniformly
LEAD_S = 2.0  # noise alone before the first recording: listening starts in a room
FOUND_COVERAGE = 0.9  # of the speech in a recording (``speech_extent``)
# Speaker A's recordings carry breath noise ~25 dB under their loudest frames; speech is above it.
SPEECH_EXTENT_DB = 20.0
BABBLE_VOICES = 8
OUTCOMES = ("found", "cut_short", "split", "merged", "missed")


@dataclass(frozen=True)
class Condition:
    name: str
    noise: str  # pink | hum | babble | knocks
    snr_db: Optional[float]  # noise level below the speech level; None: the quiet room alone (+ knocks)


CONDITIONS = (
    Condition("quiet room", "pink", None),
    Condition("room noise, SNR 20 dB", "pink", 20.0),
    Condition("room noise, SNR 10 dB", "pink", 10.0),
    Condition("room noise, SNR 5 dB", "pink", 5.0),
    Condition("mains hum, SNR 10 dB", "hum", 10.0),
    Condition("babble, SNR 15 dB", "babble", 15.0),
    Condition("babble, SNR 5 dB", "babble", 5.0),
    Condition("knocks and clicks", "knocks", None),
)


@dataclass
class Counts:
    recordings: int = 0
    found: int = 0
    cut_short: int = 0
    split: int = 0
    merged: int = 0
    missed: int = 0
    false_alarms: int = 0
    compute_ms_per_min: float = 0.0  # processing time per minute of audio (this machine, as loaded)

    def add(self, other: Counts) -> None:
        for name in ("recordings", *OUTCOMES, "false_alarms"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Stream:
    """The joined recordings; per recording its (first, end) sample and those of the speech in it."""

    speech: np.ndarray
    spans: List[Tuple[int, int]] = field(default_factory=list)  # the whole recording
    voiced: List[Tuple[int, int]] = field(default_factory=list)  # its first to last loud frame
    pauses: List[Tuple[int, int]] = field(default_factory=list)


def speech_extent(recording: np.ndarray, below_peak_db: float = SPEECH_EXTENT_DB) -> Tuple[int, int]:
    """First and end sample of the 10 ms frames within ``below_peak_db`` of the loudest one: a recording's
    own quiet lead-in and tail (breath, room) are not speech a VAD must keep."""
    frame = SAMPLE_RATE // 100
    usable = recording[: recording.size - recording.size % frame].reshape(-1, frame)
    if usable.size == 0:
        return 0, recording.size
    levels = [level_dbfs(f) for f in usable]
    loud = [i for i, level in enumerate(levels) if level >= max(levels) - below_peak_db]
    return loud[0] * frame, (loud[-1] + 1) * frame


def build_stream(recordings: Sequence[np.ndarray], rng: np.random.Generator) -> Stream:
    order = rng.permutation(len(recordings))
    gain = 10 ** ((SPEECH_DBFS - float(np.mean([level_dbfs(r) for r in recordings]))) / 20)
    parts, spans, voiced, pauses, at = [], [], [], [], 0
    lead = round(LEAD_S * SAMPLE_RATE)
    for i in order:
        pause = lead if not parts else round(rng.uniform(*PAUSE_S) * SAMPLE_RATE)
        parts += [np.zeros(pause, np.float32), (recordings[i] * gain).astype(np.float32)]
        pauses.append((at, at + pause))
        at += pause
        spans.append((at, at + recordings[i].size))
        first, end = speech_extent(recordings[i])
        voiced.append((at + first, at + end))
        at += recordings[i].size
    tail = round(PAUSE_S[1] * SAMPLE_RATE)  # time for the last utterance to end
    parts.append(np.zeros(tail, np.float32))
    pauses.append((at, at + tail))
    return Stream(np.concatenate(parts), spans, voiced, pauses)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f power spectrum (fans, traffic, a room's hum of air), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))
    return _unit(np.fft.irfft(spectrum, n))


def mains_hum(n: int, rng: np.random.Generator) -> np.ndarray:
    """50 Hz and its harmonics (a fridge, a transformer, a ground loop), unit RMS."""
    t = np.arange(n) / SAMPLE_RATE
    hum = sum(
        amp * np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 2 * np.pi))
        for k, amp in zip(range(1, 7), (1.0, 0.6, 0.5, 0.3, 0.2, 0.1))
    )
    return _unit(hum)


def babble(n: int, recordings: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Several voices at once, made from the recordings reversed (no words) and pitch-shifted, unit RMS."""
    import soxr

    total = np.zeros(n)
    for _ in range(BABBLE_VOICES):
        rate = rng.uniform(0.8, 1.25)  # resampling shifts pitch and tempo: another voice
        voice, length = [], 0
        while length < n + SAMPLE_RATE:
            clip = recordings[rng.integers(len(recordings))][::-1]
            clip = soxr.resample(clip, SAMPLE_RATE, SAMPLE_RATE * rate)
            voice.append(clip * 10 ** (rng.uniform(-6, 6) / 20))
            length += clip.size
        start = int(rng.integers(SAMPLE_RATE))
        total += np.concatenate(voice)[start : start + n]
    return _unit(total)


def knocks(stream: Stream, rng: np.random.Generator) -> np.ndarray:
    """A knock, a click or a dropped object in most pauses, as loud as speech at its peak."""
    noise = np.zeros(stream.speech.size)
    peak = 10 ** ((SPEECH_DBFS + 12) / 20)
    for start, end in stream.pauses:
        if end - start < SAMPLE_RATE or rng.random() < 0.3:
            continue
        at = int(rng.integers(start + SAMPLE_RATE // 4, end - SAMPLE_RATE // 2))
        length = int(rng.integers(SAMPLE_RATE // 100, SAMPLE_RATE // 10))  # 10-100 ms
        decay = np.exp(-np.arange(length) / (length / 5))
        thump = np.sin(2 * np.pi * rng.uniform(80, 300) * np.arange(length) / SAMPLE_RATE)
        burst = (0.6 * rng.standard_normal(length) + thump) * decay
        noise[at : at + length] += peak * burst / np.max(np.abs(burst))
    return noise


def noisy(stream: Stream, condition: Condition, recordings: Sequence[np.ndarray], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = stream.speech.size
    audio = stream.speech + pink_noise(n, rng) * 10 ** (QUIET_ROOM_DBFS / 20)
    if condition.noise == "knocks":
        audio = audio + knocks(stream, rng)
    elif condition.snr_db is not None:
        make: Dict[str, Callable[[], np.ndarray]] = {
            "pink": lambda: pink_noise(n, rng),
            "hum": lambda: mains_hum(n, rng),
            "babble": lambda: babble(n, recordings, rng),
        }
        audio = audio + make[condition.noise]() * 10 ** ((SPEECH_DBFS - condition.snr_db) / 20)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def segment(audio: np.ndarray, vad: str, options: VadOptions) -> Tuple[List[Tuple[int, int]], float]:
    """The utterances ``vad`` finds in ``audio`` as (first, end) samples, and the seconds it took."""
    segmenter = make_segmenter(vad, options)
    size = round(SAMPLE_RATE * options.block_s)
    found, started = [], time.perf_counter()
    for start in range(0, audio.size, size):
        if segmenter.feed(audio[start : start + size]):
            found.append(segmenter.last_span)
    if segmenter.flush() is not None:
        found.append(segmenter.last_span)
    return found, time.perf_counter() - started


def score(
    references: Sequence[Tuple[int, int]],
    found: Sequence[Tuple[int, int]],
    voiced: Optional[Sequence[Tuple[int, int]]] = None,
) -> Counts:
    """Count each reference's outcome (see the module's docstring) and the false alarms.

    ``voiced``: the speech inside each reference, which a found utterance must cover (default: all of it).
    """
    voiced = voiced or references

    def overlap(a: Tuple[int, int], b: Tuple[int, int]) -> int:
        return max(0, min(a[1], b[1]) - max(a[0], b[0]))

    touches = [[i for i, ref in enumerate(references) if overlap(seg, ref) > 0] for seg in found]
    counts = Counts(recordings=len(references), false_alarms=sum(not refs for refs in touches))
    for i in range(len(references)):
        mine = [j for j, refs in enumerate(touches) if i in refs]
        if not mine:
            counts.missed += 1
        elif any(len(touches[j]) > 1 for j in mine):
            counts.merged += 1
        elif len(mine) > 1:
            counts.split += 1
        elif overlap(found[mine[0]], voiced[i]) < FOUND_COVERAGE * (voiced[i][1] - voiced[i][0]):
            counts.cut_short += 1
        else:
            counts.found += 1
    return counts


def evaluate_vads(
    recordings: Sequence[np.ndarray],
    vads: Sequence[str] = VAD_KINDS,
    conditions: Sequence[Condition] = CONDITIONS,
    seed: int = 0,
    options: Optional[VadOptions] = None,
    progress: Callable[[str], Any] = lambda line: None,
) -> Dict[str, Any]:
    """Run every VAD on every condition (interleaved, so the machine's load hits them alike)."""
    vads = [check_vad(v) for v in vads]
    options = options or VadOptions()
    stream = build_stream(recordings, np.random.default_rng(seed))
    minutes = stream.speech.size / SAMPLE_RATE / 60
    rows: List[Dict[str, Any]] = []
    for index, condition in enumerate(conditions):
        audio = noisy(stream, condition, recordings, seed * 1000 + index)
        for vad in vads:
            found, seconds = segment(audio, vad, options)
            counts = score(stream.spans, found, stream.voiced)
            counts.compute_ms_per_min = round(1000 * seconds / minutes, 1)
            rows.append({"condition": condition.name, "vad": vad, **asdict(counts)})
            progress(f"{condition.name}: {vad} done")
    totals = {}
    for vad in vads:
        total = Counts()
        for row in rows:
            if row["vad"] == vad:
                total.add(Counts(**{k: v for k, v in row.items() if k not in ("condition", "vad")}))
        totals[vad] = asdict(total)
    return {
        "seed": seed,
        "recordings": len(recordings),
        "stream_minutes": round(minutes, 2),
        "options": asdict(options),
        "rows": rows,
        "totals": totals,
    }


def load_recordings(data: Path, limit: Optional[int] = None) -> List[np.ndarray]:
    from resonance.audio import load_audio
    from resonance.data.labels import load_labels

    return [load_audio(u.audio) for u in load_labels(data)[:limit]]


def format_table(report: Dict[str, Any]) -> str:
    head = ("condition", "VAD", "found", "cut short", "split", "merged", "missed", "false alarms", "ms/min")
    lines = [
        f"VAD on {report['recordings']} recordings joined by pauses ({report['stream_minutes']} min per "
        f"condition, seed {report['seed']}); per recording: found / cut short / split / merged / missed",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in [
        *report["rows"],
        *({"condition": "**all**", "vad": v, **t} for v, t in report["totals"].items()),
    ]:
        n = row["recordings"]
        cells = [
            row["condition"],
            row["vad"],
            *(f"{row[k]}/{n}" if k == "found" else str(row[k]) for k in OUTCOMES),
        ]
        cells += [
            str(row["false_alarms"]),
            str(row["compute_ms_per_min"]) if row["condition"] != "**all**" else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _unit(noise: np.ndarray) -> np.ndarray:
    """Scaled to an RMS of 1, so a level in dB is one multiplication away."""
    return noise / max(float(np.sqrt(np.mean(np.square(noise)))), 1e-12)
