"""Whisper's log-mel spectrogram in numpy: the same numbers as ``WhisperFeatureExtractor``, without torch.

The recipe (openai/whisper ``audio.py``, transformers ``feature_extraction_whisper.py``): pad or trim the audio to
the model's window, STFT with a periodic Hann window (n_fft 400 = 25 ms, hop 160 = 10 ms, centred with reflect
padding), power spectrum, Slaney-style mel filterbank, log10 clamped at 1e-10, floor at (max - 8) i.e. an 80 dB
dynamic range, then (x + 4) / 4 to land roughly in [-1, 1].
"""

from __future__ import annotations

import functools

import numpy as np

from resonance.constants import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE


def frames_for(window_seconds: float, sample_rate: int = SAMPLE_RATE, hop_length: int = HOP_LENGTH) -> int:
    """Mel frames the encoder takes for a window (30 s -> 3000)."""
    return round(window_seconds * sample_rate) // hop_length


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney mel filterbank, shape (n_fft // 2 + 1, n_mels): what librosa and transformers compute."""
    fft_freqs = np.linspace(0.0, sample_rate // 2, n_fft // 2 + 1)
    mel_edges = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    hz_edges = _mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    slopes = hz_edges[np.newaxis, :] - fft_freqs[:, np.newaxis]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    # Slaney normalisation: each triangle has unit area, so wide high-frequency bands are not louder.
    filters *= 2.0 / (hz_edges[2 : n_mels + 2] - hz_edges[:n_mels])
    filters.setflags(write=False)  # cached and shared between threads
    return filters


# The Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    linear = _F_SP * mel
    log = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, linear)


@functools.lru_cache(maxsize=4)
def _mel_bands(n_mels: int, n_fft: int, sample_rate: int):
    """The filterbank as its non-zero entries, band after band: (FFT bins, weights, where each non-empty band
    starts in them, which bands are non-empty). A triangle covers 1-14 adjacent bins of 201."""
    filters = mel_filters(n_mels, n_fft, sample_rate)
    bins, weights, starts, nonempty = [], [], [], []
    for band in range(n_mels):
        (rows,) = np.nonzero(filters[:, band])
        nonempty.append(rows.size > 0)
        if rows.size:
            starts.append(len(bins))
            bins.extend(rows.tolist())
            weights.extend(filters[rows, band].tolist())
    return np.asarray(bins), np.asarray(weights), np.asarray(starts), np.asarray(nonempty)


def _apply_mel_filters(power: np.ndarray, n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """(n_mels, frames) = ``mel_filters(...).T @ power.T`` for ``power`` (frames, bins), without BLAS.

    The dense product is 98 % multiplications by zero and goes to numpy's BLAS, whose thread pool wakes for
    it: 0.3 ms on one thread, but 8-22 ms when its threads wait for cores that onnxruntime or another process
    holds (measured on 2 shared cores: most of the features' time in `resonance bench`). Summing each band's
    few bins is element-wise work on the calling thread. In float64 like the product it replaces: int8
    models turn even 1e-6 changes of their input into other tokens now and then (float32 here changed one
    of speaker A's 40 take2 clips).
    """
    bins, weights, starts, nonempty = _mel_bands(n_mels, n_fft, sample_rate)
    mel = np.zeros((power.shape[0], n_mels), dtype=power.dtype)
    if starts.size:
        mel[:, nonempty] = np.add.reduceat(np.take(power, bins, axis=1) * weights, starts, axis=1)
    return mel.T


@functools.lru_cache(maxsize=2)
def _hann(n_fft: int) -> np.ndarray:
    # Periodic Hann (torch.hann_window's default), not the symmetric np.hanning.
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


def pad_or_trim(audio: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end, or cut, to exactly ``length`` samples."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, length - audio.shape[-1])])


def log_mel_spectrogram(
    audio: np.ndarray,
    window_seconds: float = 30.0,
    n_mels: int = N_MELS,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
) -> np.ndarray:
    """float32 (n_mels, frames) features of mono 16 kHz ``audio`` padded/trimmed to ``window_seconds``."""
    audio = pad_or_trim(np.asarray(audio, dtype=np.float32), round(window_seconds * sample_rate))
    power = _power_spectrogram(audio.astype(np.float64), n_fft, hop_length)
    mel = _apply_mel_filters(power, n_mels, n_fft, sample_rate)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)  # keep an 80 dB range below the loudest bin
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def _power_spectrogram(audio: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """|STFT|^2, shape (len // hop, n_fft // 2 + 1): centred frames, the last one dropped as Whisper does."""
    padded = np.pad(audio, n_fft // 2, mode="reflect")
    n_frames = 1 + (padded.size - n_fft) // hop_length
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, n_fft), strides=(padded.strides[0] * hop_length, padded.strides[0])
    )
    spectrum = np.fft.rfft(frames * _hann(n_fft), axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    return power[:-1]
