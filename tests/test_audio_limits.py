"""Bounded decoding (resonance/audio.py, issue #12 findings 1 and 8): the length is checked before decoding,
decoding keeps at most the limit's worth of samples, and damaged WAVs are errors rather than partial text."""

from __future__ import annotations

import io
import re
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from helpers import tone, wav

from resonance import audio as audio_module
from resonance.audio import AudioTooLong, load_audio
from resonance.errors import AudioError

av = pytest.importorskip("av", reason="PyAV ([formats]) decodes M4A/AAC")


def decoded_peak_mb(data: bytes, max_seconds: float) -> float:
    """Peak of numpy/Python memory while ``data`` is refused as too long (it must be)."""
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLong):
            load_audio(data, max_seconds=max_seconds)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bombs():
    from resonance.runtime.probe import decompression_bomb

    return {container: decompression_bomb(120.0, container=container) for container in ("mp4", "adts")}


def test_an_m4a_longer_than_the_limit_is_refused_from_its_header(bombs):
    """Finding 1: a small M4A decoding to minutes of 48 kHz stereo was decoded in full first."""
    data = bombs["mp4"]
    assert len(data) < 100_000  # 2 minutes of 48 kHz stereo, 23 MB as float samples
    with pytest.raises(AudioTooLong) as refused:
        load_audio(data, max_seconds=5)
    assert refused.value.seconds == pytest.approx(120, abs=1)
    assert re.search(r"the recording is 1[12]\d\.\d s long; the limit is 5 s", refused.value.message)
    assert decoded_peak_mb(data, 5) < 2


def test_a_container_without_a_length_stops_decoding_at_the_cap(bombs, monkeypatch):
    monkeypatch.setattr(audio_module, "_declared_seconds", lambda container, stream: None)
    with pytest.raises(AudioTooLong) as refused:
        load_audio(bombs["adts"], max_seconds=5)
    assert refused.value.seconds is None  # found while decoding
    cap_mb = (5 + audio_module.CAP_MARGIN_S) * 48000 * 2 * 4 / 1e6  # 2.3 MB of float samples
    assert decoded_peak_mb(bombs["adts"], 5) < 3 * cap_mb  # not the 46 MB the whole file decodes to


def test_within_the_limit_compressed_audio_decodes_whole(bombs):
    audio = load_audio(bombs["mp4"], max_seconds=130)
    assert len(audio) / 16000 == pytest.approx(120, abs=0.2)


def _flac_of_unknown_length(seconds: float) -> bytes:
    """A FLAC whose STREAMINFO says 0 samples ("unknown", as a recorder writing a stream leaves it)."""
    buf = io.BytesIO()
    sf.write(buf, tone(seconds), 16000, format="FLAC")
    data = bytearray(buf.getvalue())
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)  # rate | channels | bits | total samples
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def test_a_stream_of_unknown_length_is_read_block_by_block_within_the_cap():
    data = _flac_of_unknown_length(60.0)
    assert sf.info(io.BytesIO(data)).frames > 1 << 62  # what libsndfile makes of "unknown"
    with pytest.raises(AudioTooLong) as refused:
        load_audio(data, max_seconds=5)
    assert refused.value.seconds is None
    assert len(load_audio(data)) == 60 * 16000  # no limit: the whole stream (sf.read could not allocate it)


def test_a_wav_cut_short_is_an_error_not_partial_audio():
    """Finding 8: a WAV whose header promises more than the file holds was transcribed as partial text."""
    whole = wav(tone(1.0))
    for cut in (whole[: len(whole) // 2], whole[:-100]):
        with pytest.raises(AudioError, match=r"cut short: its header promises 1\.00 s"):
            load_audio(cut)
    assert len(load_audio(whole[:-1])) == 15999  # half a sample short: one frame less, no error


@pytest.mark.parametrize("keep", range(0, 48, 3))
def test_a_wav_cut_anywhere_in_its_header_is_an_audio_error(keep):
    with pytest.raises(AudioError):
        load_audio(wav(tone(1.0))[: keep + 1])


def test_a_wav_still_being_written_reads_what_it_holds():
    """A data size of 0xFFFFFFFF (or 0) means 'unknown' (a recorder that never finished the header)."""
    data = bytearray(wav(tone(1.0)))
    assert data[36:40] == b"data"
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    assert len(load_audio(bytes(data))) == 16000


def test_a_header_only_wav_is_empty_audio():
    assert load_audio(wav(np.zeros(0, np.float32))).size == 0  # the server refuses it (400 empty_audio)


@pytest.mark.parametrize("rate", [2**31 - 1, 100, 1_000_000])
def test_sample_rates_no_recorder_uses_are_errors(rate):
    data = bytearray(wav(tone(1.0)))
    data[24:28] = struct.pack("<I", rate)
    with pytest.raises(AudioError, match=f"sample rate is {rate} Hz"):
        load_audio(bytes(data))


def test_a_long_wav_is_refused_from_its_header_before_decoding():
    data = wav(tone(60.0, rate=8000), rate=8000, subtype="PCM_U8")  # 480 KB, 60 s
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLong) as refused:
            load_audio(data, max_seconds=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.seconds == pytest.approx(60)
    assert peak < 1_000_000  # header only: not 60 s of float samples (1.9 MB)
