"""`resonance data convert` on real files of every format, rate and channel count; SRC is never touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import tone

from resonance.data.check import check_dataset
from resonance.data.convert import convert_dataset, text_from_file_name
from resonance.data.labels import load_labels
from resonance.errors import ResonanceError


def tree_digest(root: Path) -> dict:
    """Every file under root (hidden ones too) -> hash of its bytes."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_m4a(path: Path, samples: np.ndarray, rate: int, layout: str = "mono") -> None:
    """AAC in an MP4 container, as phones record, encoded with PyAV (stereo: the same signal twice)."""
    import av  # the [formats] extra (in [train] and [dev]): M4A is what phones record

    channels = np.stack([samples] * (2 if layout == "stereo" else 1)).astype(np.float32)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(channels, format="fltp", layout=layout)
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


@pytest.fixture
def mixed_source(tmp_path) -> Path:
    """A dataset in the guide's layout whose files are in every format a phone or PC might produce."""
    src = tmp_path / "src"
    (src / "audio").mkdir(parents=True)
    stereo = np.stack([tone(1.0, 44100), tone(1.0, 44100, freq=330)], axis=1)
    sf.write(src / "audio/01_立体声.wav", stereo, 44100, subtype="PCM_24")
    sf.write(src / "audio/02_八千.wav", tone(1.5, 8000), 8000, subtype="PCM_16")
    sf.write(src / "audio/03_浮点.wav", tone(1.0, 48000, amp=0.1), 48000, subtype="FLOAT")
    sf.write(src / "audio/04_无损.flac", tone(1.0, 22050), 22050)
    sf.write(src / "audio/05_我想喝水.ogg", tone(1.0, 32000), 32000, format="OGG", subtype="VORBIS")
    sf.write(src / "audio/06_我饿了.mp3", tone(1.2, 44100), 44100, format="MP3")
    write_m4a(src / "audio/07_帮我开灯.m4a", tone(1.0, 44100), 44100)
    names = sorted(p.name for p in (src / "audio").iterdir())
    labels = [{"audio": f"audio/{name}", "text": name[3:].rsplit(".", 1)[0]} for name in names]
    (src / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    return src


def test_converts_every_format_to_16k_mono_pcm16(mixed_source, tmp_path):
    before = tree_digest(mixed_source)
    dst = tmp_path / "dst"
    result = convert_dataset(mixed_source, dst)
    assert tree_digest(mixed_source) == before  # SRC untouched, nothing added to it
    assert (result.converted, result.utterances, result.labels_from_names) == (7, 7, False)
    labels = json.loads((dst / "labels.json").read_text(encoding="utf-8"))
    assert labels[0] == {"audio": "audio/01_立体声.wav", "text": "立体声"}
    assert [e["audio"] for e in labels] == [
        f"audio/{p.stem}.wav" for p in sorted((mixed_source / "audio").iterdir())
    ]
    expected_seconds = [1.0, 1.5, 1.0, 1.0, 1.0, 1.2, 1.0]
    for entry, seconds in zip(labels, expected_seconds):
        info = sf.info(dst / entry["audio"])
        assert (info.format, info.samplerate, info.channels, info.subtype) == ("WAV", 16000, 1, "PCM_16")
        assert info.duration == pytest.approx(seconds, abs=0.1), entry  # lossy codecs pad a few ms
    assert [p for p in check_dataset(dst) if p.severity == "error"] == []
    assert sorted(p.name for p in dst.iterdir()) == ["audio", "convert.json", "labels.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left


def test_keeps_levels_and_clips_instead_of_wrapping(tmp_path):
    """No peak normalisation; a full-scale square wave that overshoots on resampling is clipped, not wrapped."""
    src = tmp_path / "src"
    src.mkdir()
    t = np.arange(44100) / 44100
    square = np.sign(np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    sf.write(src / "001_方波.wav", square, 44100, subtype="FLOAT")
    sf.write(src / "002_小声.wav", tone(1.0, 44100, amp=0.1), 44100)
    convert_dataset(src, tmp_path / "dst")
    out, rate = sf.read(tmp_path / "dst/audio/001_方波.wav", dtype="float32")
    reference = np.sign(np.sin(2 * np.pi * 200 * np.arange(len(out)) / rate))
    loud = np.abs(out) > 0.5
    assert np.mean(loud) > 0.8
    assert np.all(np.sign(out[loud]) == reference[loud])  # a wrapped int16 would flip the sign
    quiet, _ = sf.read(tmp_path / "dst/audio/002_小声.wav", dtype="float32")
    assert np.abs(quiet).max() == pytest.approx(0.1, abs=0.01)


def test_a_loud_stereo_phone_recording_keeps_its_level(tmp_path):
    # FFmpeg's own stereo -> mono downmix adds 3 dB: a recording peaking at 0.8 came out at 1.13 and clipped.
    src = tmp_path / "src"
    src.mkdir()
    write_m4a(src / "001_我想喝水.m4a", tone(1.0, 44100, amp=0.8), 44100, layout="stereo")
    convert_dataset(src, tmp_path / "dst")
    out, rate = sf.read(tmp_path / "dst/audio/001_我想喝水.wav", dtype="float32")
    assert rate == 16000 and out.ndim == 1
    assert np.abs(out).max() == pytest.approx(0.8, abs=0.05)
    assert len(out) == pytest.approx(16000, abs=1600)  # the codec's padding, not a lost or doubled second


def test_plain_folder_gets_labels_from_file_names(tmp_path, run_cli):
    src = tmp_path / "phone"
    src.mkdir()
    write_m4a(src / "001_我想喝水.m4a", tone(1.0, 48000), 48000)
    sf.write(src / "002_我 饿了.wav", tone(1.0, 44100), 44100)
    (src / "notes.txt").write_text("not audio: ignored", encoding="utf-8")
    proc = run_cli("data", "convert", src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "texts were taken from the file names" in proc.stdout
    assert "converting" in proc.stderr and "2/2" in proc.stderr  # progress, on stderr
    assert [(u.rel, u.text) for u in load_labels(tmp_path / "out")] == [
        ("audio/001_我想喝水.wav", "我想喝水"),
        ("audio/002_我 饿了.wav", "我 饿了"),
    ]


def test_text_from_file_name():
    assert text_from_file_name("0001_我想喝水") == "我想喝水"
    assert text_from_file_name("12-帮我_开灯") == "帮我 开灯"
    assert text_from_file_name("我冷") == "我冷"
    assert text_from_file_name("0003") == ""


def test_names_without_text_are_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "0001.wav", tone(), 16000)
    with pytest.raises(ResonanceError, match=r"do not say what is spoken: 0001\.wav") as info:
        convert_dataset(src, tmp_path / "dst")
    assert "NNN_" in info.value.hint
    assert not (tmp_path / "dst").exists()


def test_a_bad_file_stops_everything_and_names_the_file(mixed_source, tmp_path, run_cli):
    (mixed_source / "audio/02_八千.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(500))  # an image, renamed
    before = tree_digest(mixed_source)
    proc = run_cli("data", "convert", mixed_source, tmp_path / "dst")
    assert proc.returncode == 2
    assert "could not convert 'audio/02_八千.wav'" in proc.stderr and "what to do:" in proc.stderr
    assert not (tmp_path / "dst").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no half-built temp folder either
    assert tree_digest(mixed_source) == before


def test_every_bad_file_is_named_in_one_error_and_nothing_is_written(mixed_source, tmp_path, run_cli):
    """One run names them all (it stopped at the first: a rerun per bad file), and still writes nothing."""
    (mixed_source / "audio/01_立体声.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(500))
    (mixed_source / "audio/04_无损.flac").write_bytes(b"")
    whole = (mixed_source / "audio/03_浮点.wav").read_bytes()
    (mixed_source / "audio/03_浮点.wav").write_bytes(whole[: len(whole) // 2])
    before = tree_digest(mixed_source)
    proc = run_cli("data", "convert", mixed_source, tmp_path / "dst")
    assert proc.returncode == 2
    error = proc.stderr[proc.stderr.index("error: ") :]
    assert error.startswith("error: 3 of 7 recordings could not be converted, so nothing was written:\n")
    assert "  audio/01_立体声.wav: could not decode it: not a recognised audio format" in error
    assert "  audio/03_浮点.wav: truncated: the file is shorter than its header says" in error
    assert "  audio/04_无损.flac: the file is empty (0 bytes)" in error
    assert "what to do: replace each with a good copy" in error and "labels.json entries" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no DST, no temporary folder
    assert tree_digest(mixed_source) == before


def test_a_long_list_of_bad_files_is_cut_short(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "000_好.wav", tone(), 16000)
    for i in range(1, 24):
        (src / f"{i:03d}_空.wav").write_bytes(b"")
    with pytest.raises(ResonanceError) as info:
        convert_dataset(src, tmp_path / "dst")
    lines = info.value.message.splitlines()
    assert lines[0] == "23 of 24 recordings could not be converted, so nothing was written:"
    assert lines[1] == "  001_空.wav: the file is empty (0 bytes)" and lines[20].startswith("  020_空.wav")
    assert lines[21:] == ["  … and 3 more"]
    assert "labels.json" not in info.value.hint  # no labels.json in SRC: no entries to remove
    assert not (tmp_path / "dst").exists()


def test_help_says_what_force_replaces(run_cli):
    text = " ".join(run_cli("data", "convert", "--help", check=True).stdout.split())
    assert (
        "--force replace DST if it is an earlier conversion (made by `data convert`: it has convert.json)"
        in text
    )
    assert "no file was added to it since; any other folder is refused, --force or not" in text


def test_truncated_or_empty_files_are_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "001_好.wav", tone(), 16000)
    (src / "002_空.wav").write_bytes(b"")
    with pytest.raises(ResonanceError, match=r"could not convert '002_空\.wav': the file is empty"):
        convert_dataset(src, tmp_path / "dst")
    whole = (src / "001_好.wav").read_bytes()
    (src / "002_空.wav").write_bytes(whole[: len(whole) // 2])  # a copy that stopped half-way
    with pytest.raises(ResonanceError, match=r"'002_空\.wav' is truncated") as info:
        convert_dataset(src, tmp_path / "dst")
    assert "copy" in info.value.hint
    assert not (tmp_path / "dst").exists()


def test_refuses_to_overwrite_without_force(mixed_source, tmp_path, run_cli):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me", encoding="utf-8")
    proc = run_cli("data", "convert", mixed_source, dst)
    assert proc.returncode == 2
    # Not a folder convert made (no convert.json): --force would be refused too, so it is not offered.
    assert (
        "already exists" in proc.stderr
        and "not an output folder" in proc.stderr
        and "--force" not in proc.stderr
    )
    assert (dst / "precious.txt").read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in dst.iterdir()) == ["precious.txt"]

    # --force replaces an earlier conversion, never a folder of the user's (issue #12)
    proc = run_cli("data", "convert", mixed_source, dst, "--force")
    assert proc.returncode == 2
    assert "is not an output folder made by resonance (it has no convert.json)" in proc.stderr
    assert sorted(p.name for p in dst.iterdir()) == ["precious.txt"]


def test_force_replaces_an_earlier_conversion_unless_recordings_were_added(mixed_source, tmp_path):
    dst = tmp_path / "dst"
    convert_dataset(mixed_source, dst)
    record = json.loads((dst / "convert.json").read_text(encoding="utf-8"))
    assert record["source"] == str(mixed_source.resolve()) and len(record["files"]) == 7
    assert sorted(p.name for p in dst.iterdir()) == ["audio", "convert.json", "labels.json"]
    assert convert_dataset(mixed_source, dst, force=True).converted == 7  # an earlier conversion: replaced
    sf.write(dst / "audio/0008_新录的.wav", tone(), 16000)  # a take recorded into it since
    before = tree_digest(dst)
    with pytest.raises(ResonanceError, match=r"1 file\(s\) were added to it since: audio/0008_新录的\.wav"):
        convert_dataset(mixed_source, dst, force=True)
    assert tree_digest(dst) == before


def test_empty_existing_output_folder_is_fine(mixed_source, tmp_path):
    (tmp_path / "dst").mkdir()
    assert convert_dataset(mixed_source, tmp_path / "dst").converted == 7


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_output_must_not_overlap_the_source(mixed_source, where):
    before = tree_digest(mixed_source)
    dst = {"same": mixed_source, "inside": mixed_source / "converted", "contains": mixed_source.parent}[where]
    with pytest.raises(ResonanceError, match="source"):
        convert_dataset(mixed_source, dst, force=True)  # not even --force may touch SRC
    assert tree_digest(mixed_source) == before


def test_two_sources_becoming_one_file_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sf.write(src / "001_好.wav", tone(), 16000)
    sf.write(src / "001_好.flac", tone(), 16000)
    with pytest.raises(ResonanceError, match=r"would both become audio/001_好\.wav"):
        convert_dataset(src, tmp_path / "dst")


def test_unlabelled_files_are_reported_not_converted(mixed_source, tmp_path):
    sf.write(mixed_source / "audio/99_多余.wav", tone(), 16000)
    result = convert_dataset(mixed_source, tmp_path / "dst")
    assert result.skipped == ["audio/99_多余.wav"]
    assert not (tmp_path / "dst/audio/99_多余.wav").exists()


def test_labels_problems_are_reported_before_any_work(mixed_source, tmp_path):
    (mixed_source / "labels.json").write_text('[{"audio": "../x.wav", "text": "x"}]', encoding="utf-8")
    with pytest.raises(ResonanceError, match="outside the data folder"):
        convert_dataset(mixed_source, tmp_path / "dst")
    (mixed_source / "audio/01_立体声.wav").unlink()
    (mixed_source / "labels.json").write_text(
        '[{"audio": "audio/01_立体声.wav", "text": "x"}]', encoding="utf-8"
    )
    with pytest.raises(ResonanceError, match=r"do not exist: audio/01_立体声\.wav"):
        convert_dataset(mixed_source, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_a_linked_file_from_outside_the_source_is_refused(tmp_path):
    """Without labels.json the files are taken from the folder: a link out of it is refused there too."""
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    src.mkdir()
    outside.mkdir()
    sf.write(src / "001_好.wav", tone(), 16000)
    sf.write(outside / "secret.wav", tone(), 16000)
    (src / "002_别人的.wav").symlink_to(outside / "secret.wav")
    with pytest.raises(
        ResonanceError, match=r"'002_别人的\.wav' is a symbolic link to .*secret\.wav, outside"
    ):
        convert_dataset(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
