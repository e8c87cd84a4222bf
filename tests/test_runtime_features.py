"""The runtime's numpy log-mel must equal WhisperFeatureExtractor's (what the model was trained on)."""

from __future__ import annotations

import numpy as np
import pytest

from resonance.runtime.features import frames_for, log_mel_spectrogram, mel_filters, pad_or_trim


def speechy(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A chirp with harmonics, amplitude modulation and noise: energy in every mel band, like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    chirp = sum(0.2 / k * np.sin(2 * np.pi * k * (120 * t + 300 * t**2)) for k in range(1, 4))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t)
    return (chirp * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize(
    ("window", "seconds", "n_mels"),
    [(30, 3.3, 80), (5, 3.3, 80), (5, 7.2, 80), (30, 4.0, 128)],
    ids=["30s", "5s", "5s-trimmed", "30s-128mels"],
)
def test_log_mel_matches_whisper_feature_extractor(window, seconds, n_mels):
    transformers = pytest.importorskip("transformers")
    extractor = transformers.WhisperFeatureExtractor(chunk_length=window, feature_size=n_mels)
    audio = speechy(seconds)
    expected = extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    ours = log_mel_spectrogram(audio, window_seconds=window, n_mels=n_mels)
    assert ours.shape == expected.shape == (n_mels, window * 100)
    assert ours.dtype == np.float32
    assert np.abs(ours - expected).max() < 1e-4


def test_mel_filters_match_transformers():
    audio_utils = pytest.importorskip("transformers.audio_utils")
    expected = audio_utils.mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=80,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(mel_filters(80), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_librosa(n_mels):
    # openai/whisper's mel_filters.npz was made with librosa.filters.mel; large-v3 uses 128 bands.
    librosa = pytest.importorskip("librosa")
    expected = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels).T
    np.testing.assert_allclose(mel_filters(n_mels), expected, rtol=1e-5, atol=1e-7)


def test_silence_is_the_floor_value():
    # log10(1e-10) = -10, max - 8 floor does not lift an all-zero input: (-10 + 4) / 4 everywhere.
    features = log_mel_spectrogram(np.zeros(16000, np.float32), window_seconds=5)
    assert np.allclose(features, -1.5)


def test_pad_or_trim_and_frames():
    assert pad_or_trim(np.ones(10), 4).tolist() == [1, 1, 1, 1]
    assert pad_or_trim(np.ones(2), 4).tolist() == [1, 1, 0, 0]
    assert frames_for(30) == 3000
    assert frames_for(5) == 500
