"""`resonance transcribe` (offline, no server) and the runtime commands' help, run as a user would."""

from __future__ import annotations

import json
import re

import pytest
from helpers import tone, wav


@pytest.fixture
def clips(tmp_path):
    a = tmp_path / "a.wav"
    b = tmp_path / "b.wav"
    a.write_bytes(wav(tone(1.0)))
    b.write_bytes(wav(tone(2.0, rate=44100, freq=330.0), rate=44100))
    return a, b


def test_transcribe_prints_text_and_latency_per_file(run_cli, tiny_bundle, clips):
    proc = run_cli("transcribe", "--bundle", tiny_bundle, "--config", "pc-cpu", *clips)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(rf"{re.escape(str(clips[0]))}: .* +\[\d+ ms, 1\.0 s audio\]", lines[0])
    assert re.fullmatch(rf"{re.escape(str(clips[1]))}: .* +\[\d+ ms, 2\.0 s audio\]", lines[1])
    assert "is fp32 but device config 'pc-cpu' expects int8" in proc.stderr  # works, with a warning


def test_transcribe_json_lines(run_cli, tiny_bundle, clips):
    proc = run_cli("transcribe", "--bundle", tiny_bundle, "--json", *clips)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["file"] for r in records] == [str(c) for c in clips]
    for record, seconds in zip(records, (1.0, 2.0)):
        assert isinstance(record["text"], str)
        assert record["duration_s"] == pytest.approx(seconds, abs=0.01)
        assert record["latency_ms"] > 0
        assert record["timings"]["encoder_ms"] > 0


def test_one_bad_file_does_not_hide_the_others(run_cli, tiny_bundle, clips, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    proc = run_cli("transcribe", "--bundle", tiny_bundle, bad, clips[0])
    assert proc.returncode == 2
    assert "bad.wav: error: could not decode" in proc.stderr
    assert str(clips[0]) in proc.stdout


def test_transcribe_reports_a_missing_bundle_and_config(run_cli, tmp_path, clips):
    proc = run_cli("transcribe", "--bundle", tmp_path / "nothing", clips[0])
    assert proc.returncode == 2
    assert f"bundle folder '{tmp_path / 'nothing'}' does not exist" in proc.stderr
    assert "manifest.json" in proc.stderr  # the hint: what a bundle folder holds
    proc = run_cli("transcribe", "--bundle", tmp_path, "--config", "toaster", clips[0])
    assert proc.returncode == 2
    assert "unknown device config 'toaster'" in proc.stderr


def test_transcribe_a_folder_transcribes_its_recordings(run_cli, tiny_bundle, tmp_path):
    data = tmp_path / "my_data"
    (data / "audio").mkdir(parents=True)
    for name in ("002_b.wav", "001_a.wav"):
        (data / "audio" / name).write_bytes(wav(tone(1.0)))
    (data / "audio" / "notes.txt").write_text("not audio", encoding="utf-8")
    (data / "labels.json").write_text("[]", encoding="utf-8")
    proc = run_cli("transcribe", "--bundle", tiny_bundle, "--json", data)  # a dataset: its audio/
    assert proc.returncode == 0, proc.stderr
    files = [json.loads(line)["file"] for line in proc.stdout.splitlines()]
    assert files == [str(data / "audio" / "001_a.wav"), str(data / "audio" / "002_b.wav")]
    proc = run_cli(
        "transcribe", "--bundle", tiny_bundle, "--json", data / "audio", data / "audio" / "002_b.wav"
    )
    assert len(proc.stdout.splitlines()) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("transcribe", "--bundle", tiny_bundle, empty)
    assert proc.returncode == 2 and f"no audio files in the folder {empty}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_given_one_bundle_serves_it(run_cli, tiny_bundle, tmp_path):
    from helpers import Server, copy_bundle, write_config

    bundle = copy_bundle(tiny_bundle, tmp_path, "grandpa")  # --models bundles/grandpa: a common slip
    srv = Server(bundle, write_config(tmp_path / "t.yaml"))
    try:
        assert srv.get("/patients").json()[0]["id"] == "grandpa"
        assert f"{bundle} is one patient's bundle: serving it alone" in srv.output
    finally:
        srv.stop()


def test_beam_size_from_the_command_line_is_checked_where_it_is_typed(run_cli, tiny_bundle, clips):
    proc = run_cli("transcribe", "--bundle", tiny_bundle, "--beam-size", "3", "--json", clips[0])
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout)["text"], str)
    for wrong in ("0", "17", "four"):
        proc = run_cli("transcribe", "--bundle", tiny_bundle, "--beam-size", wrong, clips[0])
        assert proc.returncode == 2
        assert f"argument --beam-size: must be between 1 (greedy) and 16, got '{wrong}'" in proc.stderr
        assert "device config" not in proc.stderr and ".yaml" not in proc.stderr  # not the config's fault


@pytest.mark.parametrize("command", ["serve", "transcribe", "loadtest", "probe"])
def test_help_ends_with_worked_examples(run_cli, command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0
    examples = proc.stdout.split("examples:")[-1]
    assert f"resonance {command} " in examples


def test_serve_rejects_a_bad_port(run_cli, tmp_path):
    proc = run_cli("serve", "--models", tmp_path, "--port", "70000")
    assert proc.returncode == 2
    assert "--port 70000" in proc.stderr
