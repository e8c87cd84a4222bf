"""`resonance listen`: live captions from a microphone, offline, with one bundle.

Audio arrives in fixed 100 ms blocks (sherpa-onnx's vad-with-non-streaming-asr does the same); an energy VAD
with an adaptive noise floor cuts it into utterances, and each utterance is transcribed whole. The pauses in
dysarthric speech are long, so an utterance ends only after a full second of silence by default.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import shlex
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Iterable, Iterator, List, Optional, Union

import numpy as np

from resonance.constants import SAMPLE_RATE
from resonance.errors import ResonanceError
from resonance.mic import open_input_device

# While no pause has been heard, an utterance this long calibrates the noise floor from its quietest block.
CALIBRATE_S = 2.0


@dataclass(frozen=True)
class VadOptions:
    block_s: float = 0.1  # one block of audio (100 ms); every decision below is made per block
    start_blocks: int = 2  # voiced blocks in a row that start an utterance (200 ms: a click does not)
    end_silence_s: float = (
        1.0  # silence that ends an utterance; generous, dysarthric speech pauses mid-phrase
    )
    pre_roll_s: float = 0.3  # audio kept from before the start, so soft onsets are not clipped
    min_speech_s: float = 0.3  # utterances with less voiced audio are dropped (a cough, a knock)
    max_utterance_s: float = 30.0  # cut here even while speech goes on (one Whisper window)
    margin_db: float = 10.0  # voiced = block level this far above the noise floor …
    min_level_dbfs: float = -50.0  # … and above this absolute level (a silent room is not speech)

    def __post_init__(self) -> None:
        if self.block_s <= 0 or self.start_blocks < 1 or self.end_silence_s <= 0 or self.max_utterance_s <= 0:
            raise ResonanceError("VAD durations must be positive", "e.g. --end-silence 1.0")


def level_dbfs(block: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64)))) if block.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -120.0


class UtteranceSegmenter:
    """Feed 100 ms blocks, get finished utterances (float32 arrays at 16 kHz) back."""

    def __init__(self, options: Optional[VadOptions] = None, sample_rate: int = SAMPLE_RATE) -> None:
        self.options = options or VadOptions()
        self.sample_rate = sample_rate
        pre_blocks = self.options.start_blocks + round(self.options.pre_roll_s / self.options.block_s)
        self._before: Deque[np.ndarray] = deque(maxlen=pre_blocks)
        self._before_levels: Deque[float] = deque(maxlen=pre_blocks)  # their dBFS
        self._current: List[np.ndarray] = []
        self._levels: List[float] = []  # dBFS of the blocks in _current (for the first calibration)
        self._floor: Optional[float] = None
        self._voiced_run = 0
        self._silent_run = 0
        self._speech_blocks = 0

    @property
    def noise_floor_dbfs(self) -> Optional[float]:
        return self._floor

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

    def feed(self, block: np.ndarray) -> List[np.ndarray]:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        level = level_dbfs(block)
        opts = self.options
        if not self._current:
            voiced = self._voiced(level)
            self._before.append(block)
            self._before_levels.append(level)
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            if not voiced:
                self._track_floor(level)
            if self._voiced_run >= opts.start_blocks:
                self._current, self._levels = list(self._before), list(self._before_levels)
                self._before.clear()
                self._before_levels.clear()
                self._speech_blocks = self._voiced_run
                self._silent_run = 0
            return []
        self._current.append(block)
        self._levels.append(level)
        if self._floor is None and len(self._current) * opts.block_s >= CALIBRATE_S - 1e-9:
            self._calibrate()
        voiced = self._voiced(level)
        if voiced:
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

    def _calibrate(self) -> None:
        """No pause heard yet: the quietest block of this utterance is the room, and what was counted as
        speech is counted again against it (a steady hum is then no speech at all)."""
        self._floor = min(self._levels)
        voiced = [self._voiced(level) for level in self._levels]
        self._speech_blocks = sum(voiced)
        self._silent_run = next((i for i, v in enumerate(reversed(voiced)) if v), len(voiced))  # trailing

    def flush(self) -> Optional[np.ndarray]:
        """The utterance in progress (at the end of the input), if it has enough speech."""
        return self._finish() if self._current else None

    def _finish(self) -> Optional[np.ndarray]:
        blocks = self._current
        keep_silence = max(0, self._silent_run - round(0.3 / self.options.block_s))  # keep 300 ms of tail
        if keep_silence:
            blocks = blocks[:-keep_silence]
        speech_s = self._speech_blocks * self.options.block_s
        if self._floor is None:
            self._floor = min(self._levels)  # the pause that ended it, or its quietest moment
        self._current, self._voiced_run, self._silent_run, self._speech_blocks = [], 0, 0, 0
        self._levels = []
        if speech_s < self.options.min_speech_s - 1e-9:
            return None
        return np.concatenate(blocks).astype(np.float32, copy=False)


def transcribe_utterances(
    transcriber: Any,
    blocks: Iterable[np.ndarray],
    segmenter: UtteranceSegmenter,
    emit: Callable[[Any, float], None],
    mode: str = "free",
) -> int:
    """Segment ``blocks`` and transcribe each utterance; ``emit(result, seconds)``. Returns the count.

    ``mode``: free, phrases or both (``Transcriber.transcribe``'s phrase-board modes).

    Ctrl+C (KeyboardInterrupt) ends the loop cleanly, after transcribing the utterance in progress.
    """
    count = 0
    try:
        for block in blocks:
            for utterance in segmenter.feed(block):
                emit(transcriber.transcribe(utterance, mode=mode), utterance.size / SAMPLE_RATE)
                count += 1
    except KeyboardInterrupt:  # the way to stop listening: not an error
        pass
    tail = segmenter.flush()
    if tail is not None:
        emit(transcriber.transcribe(tail, mode=mode), tail.size / SAMPLE_RATE)
        count += 1
    return count


@contextlib.contextmanager
def microphone_blocks(
    device: Optional[Union[int, str]] = None, block_s: float = 0.1
) -> Iterator[Iterator[np.ndarray]]:
    """Blocks of float32 mono 16 kHz audio from an input device, until the caller stops iterating."""
    sd, native = open_input_device(device, "listening to a microphone")
    blocks = queue.Queue()  # float32 blocks from PortAudio's thread
    # Not every card records at 16 kHz: capture at its own rate and resample as a stream (no seams per block).
    import soxr

    resampler = (
        soxr.ResampleStream(native, SAMPLE_RATE, 1, dtype="float32") if native != SAMPLE_RATE else None
    )

    def callback(indata, frames, time_info, status) -> None:  # runs on PortAudio's thread: copy and return
        blocks.put(indata[:, 0].copy())

    stream = sd.InputStream(
        device=device,
        channels=1,
        dtype="float32",
        samplerate=native,
        blocksize=round(native * block_s),
        callback=callback,
    )

    size = round(SAMPLE_RATE * block_s)

    def generate() -> Iterator[np.ndarray]:
        # The resampler returns uneven chunks; re-cut them so every block is exactly block_s long.
        buffer = np.zeros(0, np.float32)
        while True:
            chunk = blocks.get()
            chunk = resampler.resample_chunk(chunk) if resampler is not None else chunk
            buffer = np.concatenate([buffer, chunk])
            while buffer.size >= size:
                yield buffer[:size]
                buffer = buffer[size:]

    with stream:
        yield generate()


def file_blocks(path: Any, block_s: float = 0.1) -> Iterator[np.ndarray]:
    """A recording cut into the same blocks a microphone gives: test VAD settings without a microphone."""
    from resonance.audio import load_audio

    audio = load_audio(path, SAMPLE_RATE)  # now, not at the first block: a bad path fails before the banner
    size = round(SAMPLE_RATE * block_s)
    return (audio[start : start + size] for start in range(0, audio.size, size))


def speech_command(spec: str) -> List[str]:
    """The command that says a text aloud: ``spec`` = "auto" (espeak-ng / espeak / spd-say / say, whichever
    is installed, in Mandarin) or a command line that gets the text as its last argument."""
    if spec != "auto":
        return shlex.split(spec)
    for command in (["espeak-ng", "-v", "cmn"], ["espeak", "-v", "zh"], ["spd-say", "-l", "zh"], ["say"]):
        if shutil.which(command[0]):
            return command
    raise ResonanceError(
        "--speak found no text-to-speech program (espeak-ng, espeak, spd-say or say)",
        "install one (sudo apt install espeak-ng) or name yours: --speak 'my-tts --voice zh'",
    )


class ResultSinks:
    """Where each result goes besides the screen: a URL (JSON POST) and/or a speech command.

    Neither may stop the captions: a failed POST (flaky Wi-Fi) is one line on screen, and speech runs in the
    background so listening goes on while it talks.
    """

    def __init__(
        self,
        post_url: Optional[str] = None,
        speak: Optional[List[str]] = None,
        say: Callable[[str], Any] = print,
    ) -> None:
        if post_url and not post_url.startswith(("http://", "https://")):
            raise ResonanceError(
                f"--post needs an http(s) URL, not {post_url!r}", "e.g. --post http://192.168.1.30:5000/said"
            )
        self.post_url, self.speak, self.say = post_url, speak, say
        self.speaking: List[subprocess.Popen] = []

    def send(self, record: dict, text: str) -> None:
        if self.post_url:
            self._post(record)
        if self.speak and text:
            self.speaking = [p for p in self.speaking if p.poll() is None]
            self.speaking.append(
                subprocess.Popen([*self.speak, text], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )

    def _post(self, record: dict) -> None:
        import urllib.error
        import urllib.request

        body = json.dumps(record, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(
            self.post_url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            self.say(f"   (could not post to {self.post_url}: {getattr(exc, 'reason', exc)})")

    def close(self) -> None:
        for process in self.speaking:  # let the last phrase finish, briefly
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def result_record(result: Any) -> dict:
    """What --json prints and --post sends for one utterance: the time it ended, then the result."""
    return {"time": time.strftime("%H:%M:%S"), **result.to_json()}


def listen(
    bundle_dir: Any,
    config: Any,
    device: Optional[Union[int, str]] = None,
    options: Optional[VadOptions] = None,
    as_json: bool = False,
    say: Callable[[str], Any] = print,
    mode: str = "free",
    from_file: Optional[Any] = None,
    sinks: Optional[ResultSinks] = None,
) -> int:
    """Caption the microphone (or ``from_file``) with ``bundle_dir`` until Ctrl+C; returns the utterance count."""
    from dataclasses import replace

    from resonance.runtime.phrases import check_mode, summary
    from resonance.runtime.transcriber import Transcriber

    check_mode(mode)
    sinks = sinks or ResultSinks(say=say)

    transcriber = Transcriber.for_device(bundle_dir, config)
    options = options or VadOptions()
    options = replace(options, max_utterance_s=min(options.max_utterance_s, config.max_audio_seconds))

    def emit(result: Any, seconds: float) -> None:
        record = result_record(result)
        if as_json:
            say(json.dumps(record, ensure_ascii=False))
        else:
            phrase = f"   {summary(result.phrases)}" if result.phrases is not None else ""
            say(
                f"[{record['time']}] {result.text}{phrase}   ({seconds:.1f} s, {record['latency_ms']:.0f} ms)"
            )
        sinks.send(record, record.get("phrase") or result.text)  # aloud: the accepted phrase, else the text

    source = (
        contextlib.nullcontext(file_blocks(from_file, options.block_s))
        if from_file is not None
        else microphone_blocks(device, options.block_s)
    )
    try:
        with source as blocks:
            where = f"'{from_file}'" if from_file is not None else "the microphone"
            say(
                f"listening to {where} with '{transcriber.manifest.patient}' on "
                f"{', '.join(transcriber.providers)}; Ctrl+C stops"
            )
            count = transcribe_utterances(transcriber, blocks, UtteranceSegmenter(options), emit, mode)
    finally:
        sinks.close()
    say(f"stopped after {count} utterance(s)")
    return count
