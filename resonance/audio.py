"""Audio in: any file, bytes or array -> float32 mono at 16 kHz. Light (numpy, soundfile, soxr), torch-free.

soundfile (libsndfile) reads WAV/FLAC/OGG/MP3; PyAV, when installed, covers M4A/AAC and the rest.
Every failure becomes an AudioError that says what to do; empty audio is an empty array, not an error.

Decoding is bounded for input from the network (``max_seconds``): the length a file's header declares is
checked before decoding, and decoding streams block by block with a hard cap on the samples kept (the limit
at the file's own rate, plus a second), so a 338 KB M4A that claims, or turns out, to hold 20 minutes of
48 kHz stereo never costs more than the limit's worth of memory. A WAV whose header promises more audio than
the file holds (an upload or a copy cut off) and a sample rate no recorder uses are errors, not partial text.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from resonance.constants import SAMPLE_RATE
from resonance.errors import AudioError

AudioSource = Union[str, Path, bytes, bytearray, np.ndarray]

MIN_SAMPLE_RATE = 4000  # below telephone audio (8 kHz) nothing records speech
MAX_SAMPLE_RATE = 384_000  # the highest rate audio interfaces offer; a header claiming more is damaged
CAP_MARGIN_S = 1.0  # decoding stops this far past max_seconds (containers' declared lengths are estimates)
BLOCK_FRAMES = 65536  # frames read per block while decoding with soundfile
UNKNOWN_FRAMES = 1 << 62  # libsndfile's frame count for a length it does not know (SF_COUNT_MAX) is above
WAV_CUT_TOLERANCE = 8  # bytes a WAV's data may fall short of its header (one frame of 32-bit stereo)


class AudioTooLong(AudioError):
    """Audio over the caller's ``max_seconds``: found from the header, or while decoding (never in full)."""

    def __init__(self, seconds: Optional[float], limit: float) -> None:
        said = f"{seconds:.1f} s long" if seconds is not None else f"longer than {limit + CAP_MARGIN_S:g} s"
        super().__init__(
            f"the recording is {said}; the limit is {limit:g} s", "send one short phrase per recording"
        )
        self.seconds = seconds
        self.limit = limit


def load_audio(
    source: AudioSource,
    sample_rate: int = SAMPLE_RATE,
    source_rate: int | None = None,
    max_seconds: Optional[float] = None,
) -> np.ndarray:
    """Decode ``source`` to float32 mono at ``sample_rate``.

    ``source`` is a path, the bytes of an audio file, or an array of samples (then ``source_rate`` is its rate,
    default ``sample_rate``; a 2-D array is (samples, channels)). ``max_seconds``: :class:`AudioTooLong` for
    anything longer, decided before or while decoding (see the module doc).
    """
    if isinstance(source, np.ndarray):
        audio, rate = source, source_rate or sample_rate
    else:
        audio, rate = _decode(source, max_seconds)
    if max_seconds is not None and len(audio) / rate > max_seconds:
        raise AudioTooLong(len(audio) / rate, max_seconds)
    audio = to_mono_float32(audio)
    if not np.all(np.isfinite(audio)):
        raise AudioError(
            "the audio contains NaN or infinite samples", "re-export the recording as 16-bit PCM WAV"
        )
    return resample(audio, rate, sample_rate)


SILENCE_DBFS = -50.0  # loudest 30 ms below this: no voice (a phone microphone's noise floor is ~ -60 dBFS)


def is_silent(
    audio: np.ndarray, sample_rate: int = SAMPLE_RATE, threshold_dbfs: float = SILENCE_DBFS
) -> bool:
    """Whether mono ``audio`` holds nothing louder than ``threshold_dbfs`` in any 30 ms (empty: silent).

    What is not worth keeping as a recording (retention, collected corrections): a tap on the button, a
    muted microphone. Peak 30 ms rather than the whole clip's level, so a short quiet word still counts.
    """
    frame = max(1, int(0.03 * sample_rate))
    if audio.size == 0:
        return True
    usable = audio[: max(frame, audio.size // frame * frame)]
    frames = usable.reshape(-1, min(frame, usable.size)).astype(np.float64)
    loudest = float(np.sqrt(np.max(np.mean(frames**2, axis=1))))
    return 20 * np.log10(loudest + 1e-12) < threshold_dbfs


def to_mono_float32(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.dtype.kind in "iu":  # integer PCM -> [-1, 1)
        info = np.iinfo(audio.dtype)
        audio = (audio.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    audio = audio.astype(np.float32, copy=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    elif audio.ndim != 1:
        raise AudioError(f"audio array has shape {audio.shape}", "pass samples as (n,) or (n, channels)")
    return audio


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    import soxr  # the resampler librosa uses by default

    return soxr.resample(audio, rate, target).astype(np.float32, copy=False)


def _decode(source: str | Path | bytes | bytearray, max_seconds: Optional[float]) -> Tuple[np.ndarray, int]:
    import soundfile as sf

    is_bytes = isinstance(source, (bytes, bytearray))
    if not is_bytes and not Path(source).is_file():
        raise AudioError(f"audio file not found: {source}", "check the path")
    if (len(source) if is_bytes else Path(source).stat().st_size) == 0:
        raise AudioError("the audio file is empty (0 bytes)", "send the recorded file, not an empty one")
    _check_wav_is_whole(source)
    try:
        with sf.SoundFile(io.BytesIO(source) if is_bytes else str(source)) as sound:
            return _read_capped(sound, max_seconds)
    except AudioError:
        raise
    except Exception as sf_error:  # libsndfile raises several types; try PyAV before giving up
        try:
            return _decode_with_av(source, max_seconds)
        except AudioError:
            raise
        except ImportError:
            cause: Exception = sf_error
        except Exception as av_error:
            cause = av_error
    name = "the uploaded audio" if is_bytes else f"'{source}'"
    raise AudioError(
        f"could not decode {name}: not a recognised audio format, or a damaged file",
        "use a WAV/FLAC/OGG/MP3 file (M4A/AAC need pip install 'resonance-asr[formats]'), or convert it: "
        "resonance data convert",
    ) from cause


def _check_rate(rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"the file says its sample rate is {rate} Hz, which no recording uses",
            "the file is damaged: record or export it again (16 kHz or 48 kHz WAV)",
        )


def _sample_cap(max_seconds: Optional[float], rate: int) -> Optional[int]:
    """Frames decoding may keep: the limit at the file's rate, plus a margin; None without a limit."""
    return None if max_seconds is None else int((max_seconds + CAP_MARGIN_S) * rate)


def _read_capped(sound, max_seconds: Optional[float]) -> Tuple[np.ndarray, int]:
    """(samples[, channels]) float32 from an open soundfile.SoundFile, block by block, within the cap."""
    rate = int(sound.samplerate)
    _check_rate(rate)
    # A stream written before its length was known (a FLAC with total samples 0) reads as 2**63 - 1 frames.
    declared = sound.frames if 0 <= sound.frames < UNKNOWN_FRAMES else None
    if max_seconds is not None and declared is not None and declared / rate > max_seconds:
        raise AudioTooLong(declared / rate, max_seconds)  # from the header, nothing decoded
    cap = _sample_cap(max_seconds, rate)
    blocks: List[np.ndarray] = []
    kept = 0
    while True:
        block = sound.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
        if not len(block):
            break
        kept += len(block)
        if cap is not None and kept > cap:  # a header that under-states the length
            raise AudioTooLong(None, max_seconds)
        blocks.append(block)
    data = np.concatenate(blocks) if blocks else np.zeros((0, sound.channels), np.float32)
    return (data[:, 0] if data.shape[1] == 1 else data), rate


def _check_wav_is_whole(source: str | Path | bytes | bytearray) -> None:
    """AudioError when a RIFF/WAVE file ends inside its header, or its data chunk promises more bytes than
    the file holds."""
    if isinstance(source, (bytes, bytearray)):
        head, size = bytes(source[:65536]), len(source)
    else:
        with open(source, "rb") as fh:
            head = fh.read(65536)
        size = Path(source).stat().st_size
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return  # not a WAV: libsndfile or PyAV judge it
    found = _wav_data_chunk(head)
    if found is None:
        if size <= len(head):  # the whole file was read and has no complete data chunk header
            raise AudioError(
                "the WAV file is cut short: it ends inside its header",
                "the upload or copy was interrupted: send the whole recording again",
            )
        return  # a data chunk after 64 KB of metadata: rare, left to libsndfile
    offset, declared, bytes_per_second = found
    held = size - offset
    if declared is not None and declared - held > WAV_CUT_TOLERANCE:
        said = f"{declared / bytes_per_second:.2f} s" if bytes_per_second else f"{declared} bytes"
        holds = f"{held / bytes_per_second:.2f} s" if bytes_per_second else f"{held} bytes"
        raise AudioError(
            f"the WAV file is cut short: its header promises {said} of audio, the file holds {holds}",
            "the upload or copy was interrupted: send the whole recording again",
        )


def _wav_data_chunk(head: bytes) -> Optional[Tuple[int, Optional[int], int]]:
    """(offset of the data, its declared size, bytes per second) of a RIFF/WAVE header; the size is None
    when it is the 'unknown' of a file still being written (0 or 0xFFFFFFFF). None: no complete data chunk
    header in ``head``."""
    bytes_per_second = 0
    position = 12
    while position + 8 <= len(head):
        chunk_id = head[position : position + 4]
        chunk_size = struct.unpack("<I", head[position + 4 : position + 8])[0]
        if chunk_id == b"fmt " and position + 20 <= len(head):
            bytes_per_second = struct.unpack("<I", head[position + 16 : position + 20])[0]
        if chunk_id == b"data":
            return position + 8, None if chunk_size in (0, 0xFFFFFFFF) else chunk_size, bytes_per_second
        position += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size
    return None


def _decode_with_av(
    source: str | Path | bytes | bytearray, max_seconds: Optional[float]
) -> Tuple[np.ndarray, int]:
    """(samples, channels) float32 at the file's own rate: load_audio averages the channels and resamples as
    for every other format (FFmpeg's stereo -> mono downmix adds 3 dB, which clips loud phone recordings)."""
    import av  # optional: M4A/AAC and anything else FFmpeg reads

    with av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)) as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        _check_rate(rate)
        declared = _declared_seconds(container, stream)
        if max_seconds is not None and declared is not None and declared > max_seconds + CAP_MARGIN_S:
            raise AudioTooLong(declared, max_seconds)  # from the container, nothing decoded
        cap = _sample_cap(max_seconds, rate)
        # Float, one row per channel; rate and layout unchanged, so the converter holds nothing back.
        planar = av.AudioResampler(format="fltp")
        chunks: List[np.ndarray] = []
        kept = 0
        for frame in container.decode(stream):
            for converted in planar.resample(frame):
                chunk = converted.to_ndarray()
                kept += chunk.shape[1]
                if cap is not None and kept > cap:  # no declared length, or a wrong one
                    raise AudioTooLong(None, max_seconds)
                chunks.append(chunk)
    if not chunks:
        return np.zeros(0, np.float32), SAMPLE_RATE
    return np.concatenate(chunks, axis=1).T, rate


def _declared_seconds(container, stream) -> Optional[float]:
    """The length a container or its stream declares (FFmpeg may estimate it from the bitrate), or None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE units
    return None
