"""Audio in: any file, bytes or array -> float32 mono at 16 kHz. Light (numpy, soundfile, soxr), torch-free.

soundfile (libsndfile) reads WAV/FLAC/OGG/MP3; PyAV, when installed, covers M4A/AAC and the rest.
Every failure becomes an AudioError that says what to do; empty audio is an empty array, not an error.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np

from resonance.constants import SAMPLE_RATE
from resonance.errors import AudioError

AudioSource = Union[str, Path, bytes, bytearray, np.ndarray]


def load_audio(
    source: AudioSource, sample_rate: int = SAMPLE_RATE, source_rate: int | None = None
) -> np.ndarray:
    """Decode ``source`` to float32 mono at ``sample_rate``.

    ``source`` is a path, the bytes of an audio file, or an array of samples (then ``source_rate`` is its rate,
    default ``sample_rate``; a 2-D array is (samples, channels)).
    """
    if isinstance(source, np.ndarray):
        audio, rate = source, source_rate or sample_rate
    else:
        audio, rate = _decode(source)
    audio = to_mono_float32(audio)
    if not np.all(np.isfinite(audio)):
        raise AudioError(
            "the audio contains NaN or infinite samples", "re-export the recording as 16-bit PCM WAV"
        )
    return resample(audio, rate, sample_rate)


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


def _decode(source: str | Path | bytes | bytearray) -> tuple[np.ndarray, int]:
    import soundfile as sf

    is_bytes = isinstance(source, (bytes, bytearray))
    if not is_bytes and not Path(source).is_file():
        raise AudioError(f"audio file not found: {source}", "check the path")
    if (len(source) if is_bytes else Path(source).stat().st_size) == 0:
        raise AudioError("the audio file is empty (0 bytes)", "send the recorded file, not an empty one")
    try:
        data, rate = sf.read(
            io.BytesIO(source) if is_bytes else str(source), dtype="float32", always_2d=False
        )
        return data, rate
    except Exception as sf_error:  # libsndfile raises several types; try PyAV before giving up
        try:
            return _decode_with_av(source)
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


def _decode_with_av(source: str | Path | bytes | bytearray) -> tuple[np.ndarray, int]:
    """(samples, channels) float32 at the file's own rate: load_audio averages the channels and resamples as
    for every other format (FFmpeg's stereo -> mono downmix adds 3 dB, which clips loud phone recordings)."""
    import av  # optional: M4A/AAC and anything else FFmpeg reads

    with av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)) as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        # Float, one row per channel; rate and layout unchanged, so the converter holds nothing back.
        planar = av.AudioResampler(format="fltp")
        chunks = [
            converted.to_ndarray()
            for frame in container.decode(stream)
            for converted in planar.resample(frame)
        ]
        rate = stream.codec_context.sample_rate or stream.rate
    if not chunks:
        return np.zeros(0, np.float32), SAMPLE_RATE
    return np.concatenate(chunks, axis=1).T, int(rate)
