"""Whole recording sessions without a sound card: the 'microphone' plays real speech clips, keys are scripted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, List

import numpy as np
import pytest
import soundfile as sf
from helpers import DEMO_DATA

from resonance.data.check import check_dataset
from resonance.data.labels import load_labels
from resonance.data.record import read_phrases, record_session, safe_file_name
from resonance.errors import ResonanceError

RATE = 16000
PHRASES = ["我想喝水", "我饿了", "我想吃饭"]


def speech(index: int) -> np.ndarray:
    """A real recorded phrase from the built-in demo clips."""
    path = sorted((DEMO_DATA / "take1" / "audio").glob("*.wav"))[index]
    samples, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    return samples


def in_window(samples: np.ndarray, seconds: float = 4.0, lead: float = 1.0) -> np.ndarray:
    """What the microphone hears in a take: quiet room noise, then the phrase, then noise again."""
    noise = np.random.default_rng(len(samples)).normal(0, 0.002, int(seconds * RATE)).astype(np.float32)
    start = int(lead * RATE)
    noise[start : start + len(samples)] += samples[: len(noise) - start]
    return noise


class FakeMicrophone:
    """Plays the given takes in order, as a Recorder: seconds -> samples."""

    def __init__(self, takes: Iterable[np.ndarray]) -> None:
        self.takes = list(takes)
        self.calls: List[float] = []

    def __call__(self, seconds: float) -> np.ndarray:
        self.calls.append(seconds)
        return self.takes.pop(0)


class Keys:
    """Scripted answers to the prompts; running out is the helper closing the window (EOF)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: List[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise EOFError
        return self.answers.pop(0)


def run(out: Path, phrases, takes, *keys, **kwargs):
    lines: List[str] = []
    mic = FakeMicrophone(takes)
    summary = record_session(phrases, out, mic, ask=Keys(*keys), say=lines.append, **kwargs)
    return summary, "\n".join(lines), mic


def labels(out: Path):
    return json.loads((out / "labels.json").read_text(encoding="utf-8"))


def test_session_records_trims_and_writes_labels_after_each_take(tmp_path):
    out = tmp_path / "patient"
    takes = [in_window(speech(0)), in_window(speech(1)), in_window(speech(1), lead=0.5)]
    # phrase 1: record, keep; phrase 2: record, redo, keep; phrase 3: skip
    summary, said, mic = run(out, PHRASES, takes, "", "", "", "r", "", "s")
    assert (summary.kept, summary.skipped, summary.remaining, summary.finished) == (2, 1, 1, True)
    assert len(mic.calls) == 3 and mic.calls[0] == 4.0
    assert labels(out) == [
        {"audio": "audio/0001_我想喝水.wav", "text": "我想喝水"},
        {"audio": "audio/0002_我饿了.wav", "text": "我饿了"},
    ]
    for entry, source in zip(labels(out), (speech(0), speech(1))):
        info = sf.info(out / entry["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16")
        # the 4 s window is trimmed to the phrase plus a little padding
        assert len(source) / RATE <= info.duration < len(source) / RATE + 0.6
    assert "saved audio/0001_我想喝水.wav" in said
    assert "done: 2 kept, 1 skipped" in said
    assert [p for p in check_dataset(out) if p.severity == "error"] == []
    assert sorted(p.name for p in out.iterdir()) == ["audio", "labels.json"]  # no temp files left
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["0001_我想喝水.wav", "0002_我饿了.wav"]


def test_interrupted_session_resumes_without_overwriting(tmp_path):
    out = tmp_path / "patient"
    summary, said, _ = run(out, PHRASES, [in_window(speech(0))], "", "", "q")
    assert (summary.kept, summary.remaining, summary.finished) == (1, 2, False)
    assert "2 left. Run the same command to continue" in said
    first = out / "audio/0001_我想喝水.wav"
    digest = hashlib.sha256(first.read_bytes()).hexdigest()

    summary, said, mic = run(out, PHRASES, [in_window(speech(1)), in_window(speech(2))], "", "", "", "")
    assert said.startswith("1 of 3 phrases already recorded")
    assert (summary.kept, summary.finished) == (2, True)
    assert len(mic.calls) == 2  # the first phrase was not asked for again
    assert [e["text"] for e in labels(out)] == PHRASES
    assert [e["audio"] for e in labels(out)][1:] == ["audio/0002_我饿了.wav", "audio/0003_我想吃饭.wav"]
    assert hashlib.sha256(first.read_bytes()).hexdigest() == digest

    summary, said, mic = run(out, PHRASES, [])  # everything recorded: nothing to do, nothing asked
    assert said.startswith("3 of 3 phrases already recorded") and mic.calls == []


def test_ctrl_c_or_closed_input_keeps_what_was_kept(tmp_path):
    out = tmp_path / "patient"

    def mic_then_ctrl_c(seconds):
        if mic_then_ctrl_c.calls:
            raise KeyboardInterrupt
        mic_then_ctrl_c.calls += 1
        return in_window(speech(0))

    mic_then_ctrl_c.calls = 0
    summary = record_session(PHRASES, out, mic_then_ctrl_c, ask=Keys("", "", ""), say=lambda _: None)
    assert (summary.kept, summary.finished) == (1, False)
    assert [e["text"] for e in labels(out)] == ["我想喝水"]
    assert len(list((out / "audio").iterdir())) == 1

    summary, _, _ = run(out, PHRASES, [in_window(speech(1))], "", "")  # input closes after one take
    assert (summary.kept, summary.remaining, summary.finished) == (1, 1, False)
    assert [e["text"] for e in labels(out)] == ["我想喝水", "我饿了"]


def test_bad_takes_are_explained(tmp_path):
    out = tmp_path / "patient"
    silence = np.zeros(4 * RATE, np.float32)
    clipped = np.clip(in_window(speech(0)) * 20, -1, 1)
    cut_off = in_window(speech(1), lead=4.0 - len(speech(1)) / RATE + 0.3)  # starts too late
    keys = [
        "",
        "",
        "r",
        "r",
        "r",
        "",
    ]  # silent: Enter cannot keep it; redo; clipped: redo; cut off: redo; keep
    summary, said, _ = run(out, PHRASES[:1], [silence, clipped, cut_off, in_window(speech(0))], *keys)
    assert "error: heard nothing" in said
    assert "error: clipped" in said
    assert "warning: still speaking at the end of the 4 s window" in said and "--seconds 6" in said
    assert summary.kept == 1
    assert len(list((out / "audio").iterdir())) == 1


def test_nothing_to_keep_prompts_again(tmp_path):
    keys = Keys("", "", "s")
    summary = record_session(
        PHRASES[:1], tmp_path, FakeMicrophone([np.zeros(RATE, np.float32)]), ask=keys, say=lambda _: None
    )
    assert summary.kept == 0 and summary.skipped == 1
    assert keys.prompts[-1].startswith("nothing to keep")


def test_existing_files_are_never_overwritten(tmp_path):
    out = tmp_path / "patient"
    (out / "audio").mkdir(parents=True)
    sf.write(out / "audio/0007_别的.wav", speech(2), RATE)  # a recording that is not in labels.json
    before = (out / "audio/0007_别的.wav").read_bytes()
    run(out, ["a/b: c?"], [in_window(speech(0))], "", "")
    assert labels(out) == [{"audio": "audio/0008_a_b_c.wav", "text": "a/b: c?"}]
    assert (out / "audio/0007_别的.wav").read_bytes() == before


def test_a_phrase_listed_twice_needs_two_recordings(tmp_path):
    out = tmp_path / "patient"
    run(out, ["我冷", "我冷"], [in_window(speech(0))], "", "", "q")
    summary, said, _ = run(out, ["我冷", "我冷"], [in_window(speech(1))], "", "")
    assert said.startswith("1 of 2 phrases already recorded") and summary.kept == 1
    assert [u.rel for u in load_labels(out)] == ["audio/0001_我冷.wav", "audio/0002_我冷.wav"]


def test_unknown_keys_are_asked_again(tmp_path):
    keys = Keys("x", "", "?", "")
    summary = record_session(
        PHRASES[:1], tmp_path, FakeMicrophone([in_window(speech(0))]), ask=keys, say=lambda _: None
    )
    assert summary.kept == 1
    assert sum(p.startswith("type Enter, r, s or q") for p in keys.prompts) == 2


def test_safe_file_name():
    assert safe_file_name('我想/喝\\水:*?"<>| 了') == "我想_喝_水_了"
    assert safe_file_name("  ..帮我开灯.. ") == "帮我开灯"
    assert len(safe_file_name("字" * 200)) == 50


def test_read_phrases(tmp_path):
    path = tmp_path / "phrases.txt"
    path.write_bytes("\ufeff# 常用\n我想喝水\n\n  我饿了  \n".encode())
    assert read_phrases(path) == ["我想喝水", "我饿了"]
    path.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ResonanceError, match="no phrases"):
        read_phrases(path)
    with pytest.raises(ResonanceError, match="not found"):
        read_phrases(tmp_path / "missing.txt")


def test_broken_labels_in_out_dir_are_not_clobbered(tmp_path):
    (tmp_path / "labels.json").write_text("[{", encoding="utf-8")
    with pytest.raises(ResonanceError, match="not valid JSON"):
        run(tmp_path, PHRASES, [])
    assert (tmp_path / "labels.json").read_text(encoding="utf-8") == "[{"


def test_cli_without_a_microphone_says_what_to_do(tmp_path, run_cli):
    try:
        import sounddevice as sd

        sd.query_devices(kind="input")
        pytest.skip("this machine has a microphone; the command would start recording")
    except (OSError, ValueError, ImportError):
        pass  # no PortAudio, or no input device: the case under test
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("我想喝水\n", encoding="utf-8")
    proc = run_cli("data", "record", "--phrases", phrases, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "microphone" in proc.stderr and "what to do:" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_empty_labels_file_and_bad_seconds(tmp_path):
    (tmp_path / "labels.json").write_text("[]", encoding="utf-8")
    summary, _, _ = run(tmp_path, PHRASES[:1], [in_window(speech(0))], "", "")
    assert summary.kept == 1 and len(labels(tmp_path)) == 1
    with pytest.raises(ResonanceError, match="out of range"):
        run(tmp_path / "other", PHRASES, [], seconds=0)
    assert not (tmp_path / "other").exists()


def test_recording_into_an_existing_dataset_keeps_its_entries_byte_for_byte(tmp_path):
    """Extra keys (speaker, notes, split), the order, escapes and layout of what is there are untouched."""
    out = tmp_path / "patient"
    (out / "audio").mkdir(parents=True)
    sf.write(out / "audio" / "0007_我想喝水.wav", speech(0), RATE, subtype="PCM_16")
    existing = (
        '\ufeff[ {"text": "\\u6211\\u60f3\\u559d\\u6c34", "audio": "audio/0007_我想喝水.wav",\n'
        '    "speaker": "A", "notes": {"take": 2, "quiet": true}, "split": "train"}  ]\n'
    )
    (out / "labels.json").write_bytes(existing.encode("utf-8"))
    before = (out / "labels.json").read_bytes()
    summary, said, _ = run(out, PHRASES, [in_window(speech(1))], "", "", "q")
    assert said.startswith("1 of 3 phrases already recorded") and summary.kept == 1
    after = (out / "labels.json").read_bytes()
    untouched = before.rstrip().rstrip(b"]").rstrip()  # everything up to the closing bracket
    assert after.startswith(untouched)
    entries = json.loads(after.decode("utf-8-sig"))
    assert entries[0] == {
        "text": "我想喝水",
        "audio": "audio/0007_我想喝水.wav",
        "speaker": "A",
        "notes": {"take": 2, "quiet": True},
        "split": "train",
    }
    assert entries[1] == {"audio": "audio/0008_我饿了.wav", "text": "我饿了"}
    assert [p.code for p in check_dataset(out) if p.severity == "error"] == []


def test_a_take_written_when_a_session_was_killed_is_cleaned_next_time(tmp_path):
    import subprocess
    import sys

    from resonance.fsutil import _host_tag

    out = tmp_path / "patient"
    run(out, PHRASES, [in_window(speech(0))], "", "", "q")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / "audio" / f".0002_我饿了.wav.tmp-{_host_tag()}-{dead.pid}-x1y2"
    stale.write_bytes(b"RIFF half a take")
    run(out, PHRASES, [], "q")
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["0001_我想喝水.wav"]


def test_cli_refuses_labels_json_as_the_phrase_list(tmp_path, run_cli):
    out = tmp_path / "patient"
    out.mkdir()
    (out / "labels.json").write_text('[{"audio": "audio/1.wav", "text": "我想喝水"}]', encoding="utf-8")
    before = (out / "labels.json").read_bytes()
    proc = run_cli("data", "record", "--phrases", out / "labels.json", "--out", out)
    assert proc.returncode == 2 and "is the phrase list" in proc.stderr
    assert (out / "labels.json").read_bytes() == before and sorted(out.iterdir()) == [out / "labels.json"]
