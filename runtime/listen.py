"""`resonance listen`: live captions from a microphone, offline, with one bundle.

Audio arrives in fixed 100 ms blocks (sherpa-onnx's vad-with-non-streaming-asr does the same); a VAD
(``vad.py``: Silero by default, or the energy detector) cuts it into utterances, and each utterance is
transcribed whole. The pauses in dysarthric speech are long, so an utterance ends only after a full second of
silence by default.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shlex
import shutil
import subprocess
import time
from typing import Any, Callable, Iterable, Iterator, List, Optional, Union

import numpy as np

from resonance.constants import SAMPLE_RATE
from resonance.errors import ResonanceError
from resonance.mic import open_input_device
from resonance.runtime.vad import VAD_KINDS, UtteranceSegmenter, VadOptions, make_segmenter


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
    vad: str = VAD_KINDS[0],
) -> int:
    """Caption the microphone (or ``from_file``) with ``bundle_dir`` until Ctrl+C; returns the utterance count.

    ``vad``: which detector cuts the utterances (``vad.VAD_KINDS``).
    """
    from dataclasses import replace

    from resonance.runtime.phrases import check_mode, summary
    from resonance.runtime.transcriber import Transcriber

    check_mode(mode)
    sinks = sinks or ResultSinks(say=say)
    options = options or VadOptions()
    options = replace(options, max_utterance_s=min(options.max_utterance_s, config.max_audio_seconds))
    segmenter = make_segmenter(vad, options)  # before the model loads: a missing VAD package fails fast
    transcriber = Transcriber.for_device(bundle_dir, config)

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
                f"{', '.join(transcriber.providers)}, {vad} VAD; Ctrl+C stops"
            )
            count = transcribe_utterances(transcriber, blocks, segmenter, emit, mode)
    finally:
        sinks.close()
    say(f"stopped after {count} utterance(s)")
    return count
