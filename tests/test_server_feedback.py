"""Corrections from the caregiver's page kept as training data (`serve --collect DIR`, POST /feedback):
the standard data format that `data check` passes, nothing overwritten, nothing written on a refusal."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Set

import numpy as np
import pytest
import soundfile as sf
from helpers import DEMO_DATA, Server, assert_error, tone, wav, write_config

from resonance.audio import load_audio
from resonance.data.check import inspect_dataset
from resonance.runtime import collect
from resonance.runtime.collect import (
    ClipNotKept,
    CollectionDamaged,
    CollectionFull,
    Collector,
    InvalidCorrection,
)

SPEECH = DEMO_DATA / "take1" / "audio" / "0000_我想喝水.wav"


def speech() -> np.ndarray:
    """Real speech with a second of silence before it (the page's recordings start before the speaker)."""
    audio = load_audio(SPEECH.read_bytes(), 16000)
    return np.concatenate([np.zeros(16000, np.float32), audio])


def files_under(root: Path) -> Set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


# -- the collector on its own --------------------------------------------------------------------------------------


def test_a_correction_becomes_a_recording_data_check_passes(tmp_path):
    collector = Collector(tmp_path / "kept")
    entry = collector.add("p1", speech(), "  我想喝水 ")
    assert entry == {
        "audio": "audio/0001_我想喝水.wav",
        "text": "我想喝水",
        "count": 1,
        "seconds": entry["seconds"],
    }
    folder = tmp_path / "kept" / "p1"
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    assert labels == [{"audio": "audio/0001_我想喝水.wav", "text": "我想喝水"}]
    info = sf.info(folder / "audio" / "0001_我想喝水.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.duration < len(speech()) / 16000 - 0.5  # the leading second of silence was trimmed
    assert entry["seconds"] == pytest.approx(info.duration, abs=0.01)
    for path in (folder, folder / "audio"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for path in (folder / "labels.json", folder / "audio" / "0001_我想喝水.wav"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    report = inspect_dataset(folder)
    assert report.errors == [] and report.utterances == 1
    assert files_under(folder) == {"labels.json", "audio/0001_我想喝水.wav"}  # no temp file left behind


def test_existing_recordings_and_entries_are_kept_as_they_are(tmp_path):
    folder = tmp_path / "kept" / "p1"
    (folder / "audio").mkdir(parents=True)
    old = folder / "audio" / "0007_开灯.wav"
    old.write_bytes(wav(tone(1.0)))
    stray = folder / "audio" / "0008_我想喝水.wav"  # a file someone copied in, not (yet) in labels.json
    stray.write_bytes(b"someone else's")
    entries = [{"audio": "audio/0007_开灯.wav", "text": "开灯", "speaker": "A", "notes": "first take"}]
    (folder / "labels.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    collector = Collector(tmp_path / "kept")
    first = collector.add("p1", speech(), "我想喝水")
    second = collector.add("p1", speech(), "我想喝水")
    assert (first["audio"], second["audio"]) == ("audio/0009_我想喝水.wav", "audio/0010_我想喝水.wav")
    assert second["count"] == 3
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    assert labels[0] == entries[0]  # unknown keys too
    assert [e["audio"] for e in labels[1:]] == ["audio/0009_我想喝水.wav", "audio/0010_我想喝水.wav"]
    assert stray.read_bytes() == b"someone else's" and old.read_bytes() == wav(tone(1.0))


@pytest.mark.parametrize(
    "audio, error",
    [
        (np.zeros(32000, np.float32), "silent"),
        (np.zeros(0, np.float32), "silent"),
        (tone(0.2), "too short"),  # a tap of the button, not a phrase
    ],
)
def test_silent_or_empty_clips_are_not_kept(tmp_path, audio, error):
    collector = Collector(tmp_path / "kept")
    with pytest.raises(ClipNotKept, match=error):
        collector.add("p1", audio, "我想喝水")
    assert files_under(tmp_path / "kept") == set()


@pytest.mark.parametrize("text", ["", "   ", "字" * 101, "我想\n喝水", None])
def test_a_text_that_cannot_be_a_label_is_refused(tmp_path, text):
    with pytest.raises(InvalidCorrection):
        Collector(tmp_path / "kept").add("p1", speech(), text)
    assert files_under(tmp_path / "kept") == set()


def test_the_quota_stops_collection_before_anything_is_written(tmp_path):
    collector = Collector(tmp_path / "kept", quota_mb=0.08)  # room for one 1.7 s clip (53 kB), not two
    collector.add("p1", speech(), "我想喝水")
    before = files_under(tmp_path / "kept")
    with pytest.raises(CollectionFull, match="quota"):
        collector.add("p1", speech(), "我想喝水")
    assert files_under(tmp_path / "kept") == before
    assert Collector(tmp_path / "kept", quota_mb=0.08).used_mb > 0.04  # a restart counts what is there


def test_a_damaged_labels_file_is_never_rewritten(tmp_path):
    folder = tmp_path / "kept" / "p1"
    folder.mkdir(parents=True)
    (folder / "labels.json").write_text('{"audio": "oops"}', encoding="utf-8")
    with pytest.raises(CollectionDamaged, match="not a list"):
        Collector(tmp_path / "kept").add("p1", speech(), "我想喝水")
    assert files_under(folder) == {"labels.json"}
    assert (folder / "labels.json").read_text(encoding="utf-8") == '{"audio": "oops"}'


def test_a_recording_whose_label_cannot_be_written_is_removed_again(tmp_path, monkeypatch):
    collector = Collector(tmp_path / "kept")

    def full_disk(path, data, mode=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(collect, "write_bytes_atomic", full_disk)
    with pytest.raises(OSError):
        collector.add("p1", speech(), "我想喝水")
    assert files_under(tmp_path / "kept") == set()


# -- POST /feedback on a real server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("feedback")
    models = root / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    config = write_config(root / "test.yaml")
    token_file = root / "token"
    srv = Server(models, config, "--auth", "--token-file", str(token_file), "--collect", str(root / "kept"))
    yield srv, root / "kept", {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    srv.stop()


def post_feedback(srv: Server, headers, text="我想喝水", patient="p1", audio=None):
    files = {"file": ("r.wav", wav(speech()) if audio is None else audio, "audio/wav")}
    data = {k: v for k, v in (("text", text), ("patient", patient)) if v is not None}
    return srv.post("/feedback", files=files, data=data, headers=headers)


def test_feedback_keeps_the_recording_and_says_so(served):
    srv, kept, auth = served
    health = srv.get("/health").json()
    assert health["collecting"] is True
    assert "(--collect, at most 1000 MB)" in srv.output
    (patient,) = srv.get("/patients", headers=auth).json()
    assert isinstance(patient["phrases"], list)  # the page's grid
    reply = post_feedback(srv, auth)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["saved"] is True and body["patient"] == "p1" and body["audio"].endswith("_我想喝水.wav")
    labels = json.loads((kept / "p1" / "labels.json").read_text(encoding="utf-8"))
    assert labels[-1] == {"audio": body["audio"], "text": "我想喝水"}
    assert inspect_dataset(kept / "p1").errors == []
    assert "我想喝水" not in srv.output  # the log says a correction was kept, not what it says


def test_invisible_characters_are_not_kept_in_a_label(served):
    srv, kept, auth = served
    reply = post_feedback(srv, auth, text="\ufeff 我想喝水\u200b\u2060 ")  # pasted from a chat app
    assert reply.status_code == 201, reply.text
    assert reply.json()["audio"].endswith("_我想喝水.wav")
    labels = json.loads((kept / "p1" / "labels.json").read_text(encoding="utf-8"))
    assert labels[-1]["text"] == "我想喝水"  # the phrase the page showed, not a look-alike label beside it
    before = files_under(kept)
    assert_error(post_feedback(srv, auth, text="\u200b\u200c \u200d"), 400, "bad_text")  # nothing visible
    assert files_under(kept) == before


def test_feedback_refusals_write_nothing(served):
    srv, kept, auth = served
    before = files_under(kept)
    assert_error(post_feedback(srv, {}), 401, "unauthorized")
    assert_error(post_feedback(srv, auth, patient="nobody"), 404, "unknown_patient")
    assert_error(post_feedback(srv, auth, patient="../p1"), 400, "invalid_patient")
    assert_error(post_feedback(srv, auth, text="字" * 500), 400, "bad_text")
    assert_error(post_feedback(srv, auth, text=None), 400, "bad_text")
    assert_error(post_feedback(srv, auth, audio=wav(np.zeros(32000, np.float32))), 422, "not_kept")
    assert_error(post_feedback(srv, auth, audio=b"not audio"), 400, "bad_audio")
    no_file = srv.post("/feedback", data={"text": "我想喝水", "patient": "p1"}, headers=auth)
    assert_error(no_file, 415)
    assert files_under(kept) == before
    assert srv.alive and "Traceback" not in srv.output


def test_feedback_is_refused_when_collection_is_off(tmp_path, tiny_bundle):
    models = tmp_path / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    config = write_config(tmp_path / "test.yaml")
    before = files_under(tmp_path)
    srv = Server(models, config)
    try:
        assert srv.get("/health").json()["collecting"] is False
        error = assert_error(post_feedback(srv, {}), 403, "collection_off")
        assert "--collect" in error["hint"]
    finally:
        srv.stop()
    assert files_under(tmp_path) == before


def test_collect_may_not_share_a_folder_with_the_models_or_retain(run_cli, tmp_path):
    (tmp_path / "bundles").mkdir()
    for extra in (
        ["--collect", tmp_path / "bundles" / "kept"],
        ["--retain", tmp_path / "r", "--collect", tmp_path / "r"],
    ):
        proc = run_cli("serve", "--models", tmp_path / "bundles", "--port", "0", *extra)
        assert proc.returncode == 2, proc.stderr
        assert "overlaps" in proc.stderr and "a folder of its own" in proc.stderr
