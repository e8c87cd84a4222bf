"""resonance/fsutil.py: outputs never overlap inputs, --force replaces only our own outputs, writes are atomic,
and what a killed run leaves behind is cleaned by the next one (issue #12)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resonance.errors import ResonanceError
from resonance.fsutil import (
    _host_tag,
    atomic_directory,
    atomic_file,
    clean_stale_temporaries,
    clean_stale_temporaries_in,
    read_json_file,
    refuse_overlap,
    refuse_to_overwrite,
    write_json_atomic,
)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def dataset(tmp_path) -> Path:
    data = tmp_path / "my_data"
    (data / "audio").mkdir(parents=True)
    (data / "audio" / "001.wav").write_bytes(b"RIFF")
    (data / "labels.json").write_text("[]", encoding="utf-8")
    return data


@pytest.mark.parametrize(
    "out, relation",
    [
        ("my_data", "is the data folder"),
        ("my_data/audio", "is inside the data folder"),
        ("my_data/new/adapter", "is inside the data folder"),
        (".", "holds the data folder"),
    ],
)
def test_refuse_overlap_same_child_parent(tmp_path, dataset, out, relation):
    with pytest.raises(ResonanceError, match=relation) as info:
        refuse_overlap(tmp_path / out, "adapter folder", [("data folder", dataset)])
    assert "nothing was changed" in info.value.hint


def test_refuse_overlap_sees_through_symlinks(tmp_path, dataset):
    link = tmp_path / "link-to-data"
    link.symlink_to(dataset)
    with pytest.raises(ResonanceError, match="is the data folder"):
        refuse_overlap(link, "adapter folder", [("data folder", dataset)])
    with pytest.raises(ResonanceError, match="is inside the data folder"):
        refuse_overlap(link / "adapter", "adapter folder", [("data folder", dataset)])
    with pytest.raises(ResonanceError, match="holds the data folder"):
        refuse_overlap(tmp_path, "bundle folder", [("data folder", link)])


def test_refuse_overlap_allows_siblings_and_skips_missing_inputs(tmp_path, dataset):
    refuse_overlap(tmp_path / "adapters" / "grandpa", "adapter folder", [("data folder", dataset)])
    refuse_overlap(tmp_path / "my_data-16k", "output folder", [("source folder", dataset)])  # a name prefix
    refuse_overlap(dataset, "adapter folder", [("eval folder", None), ("config file", "")])


def test_force_replaces_only_a_folder_the_command_made(tmp_path, dataset):
    with pytest.raises(ResonanceError, match="already exists") as refused:
        refuse_to_overwrite(dataset, False, "adapter", own=("train_config.json",))
    # The user's data folder is not called an adapter, and --force, which would be refused, is not offered.
    assert "is not an adapter made by resonance (it has no train_config.json)" in refused.value.message
    assert "--force" not in refused.value.hint
    with pytest.raises(ResonanceError, match=r"not an adapter made by resonance.*train_config\.json"):
        refuse_to_overwrite(dataset, True, "adapter", own=("train_config.json",))
    file = tmp_path / "notes.txt"
    file.write_text("mine", encoding="utf-8")
    with pytest.raises(ResonanceError, match="is a file"):
        refuse_to_overwrite(file, True, "bundle", own=("manifest.json",))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "train_config.json").write_text("{}", encoding="utf-8")
    refuse_to_overwrite(adapter, True, "adapter", own=("train_config.json",))  # ours: may be replaced
    with pytest.raises(ResonanceError) as refused:
        refuse_to_overwrite(adapter, False, "adapter", own=("train_config.json",))
    assert refused.value.message.startswith("adapter '") and "pass --force" in refused.value.hint
    link = tmp_path / "link"
    link.symlink_to(adapter)
    with pytest.raises(ResonanceError, match="is a link, not an adapter made by resonance") as refused:
        refuse_to_overwrite(link, False, "adapter", own=("train_config.json",))
    assert "--force" not in refused.value.hint
    with pytest.raises(ResonanceError) as refused:  # a command without --force (update) never offers it
        refuse_to_overwrite(adapter, False, "adapter", own=("train_config.json",), force_flag=None)
    assert "--force" not in refused.value.hint
    (tmp_path / "empty").mkdir()
    refuse_to_overwrite(tmp_path / "empty", False, "adapter", own=("train_config.json",))


def test_atomic_directory_with_force_keeps_a_users_folder(dataset):
    before = sorted(p.name for p in dataset.rglob("*"))
    refused = pytest.raises(ResonanceError, match="not a bundle made by resonance")
    with refused, atomic_directory(dataset, force=True, what="bundle", own=("manifest.json",)) as tmp:
        (tmp / "manifest.json").write_text("{}", encoding="utf-8")
    assert sorted(p.name for p in dataset.rglob("*")) == before
    assert [p.name for p in dataset.parent.iterdir()] == ["my_data"]  # no temporary left either


def test_atomic_file_leaves_nothing_on_failure_and_replaces_on_success(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    with atomic_file(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".checkpoint.pt.tmp-")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target]


def test_next_run_removes_what_a_killed_run_left(tmp_path, caplog):
    dead, host = _dead_pid(), _host_tag()
    stale_dir = tmp_path / f".bundle.tmp-{host}-{dead}-abc123"
    (stale_dir / "big").mkdir(parents=True)
    (stale_dir / "big" / "encoder.onnx").write_bytes(b"x" * 1000)
    stale_file = tmp_path / f".labels.json.tmp-{host}-{dead}-q9z"
    stale_file.write_bytes(b"[")
    running = tmp_path / f".bundle.tmp-{host}-{os.getpid()}-live"  # a run in progress: never touched
    running.mkdir()
    other_host = tmp_path / f".bundle.tmp-otherhost-{dead}-abc"  # another machine on a shared folder
    other_host.mkdir()
    legacy = tmp_path / ".bundle.tmp-k2j4h5l1"  # before names carried their owner: named, kept
    legacy.mkdir()
    other_patient = tmp_path / f".bundle2.tmp-{host}-{dead}-abc"  # another output's killed export: gone too
    other_patient.mkdir()
    other_running = tmp_path / f".bundle2.tmp-{host}-{os.getpid()}-abc"  # running: kept, not named
    other_running.mkdir()
    logged = caplog.at_level(logging.INFO, logger="resonance.fsutil")
    with logged, atomic_directory(tmp_path / "bundle", what="bundle") as tmp:
        (tmp / "manifest.json").write_text("{}", encoding="utf-8")
    assert not stale_dir.exists() and not other_patient.exists()
    assert running.exists() and other_host.exists() and legacy.exists() and other_running.exists()
    assert (
        str(legacy) in caplog.text and str(running) in caplog.text and str(other_running) not in caplog.text
    )
    write_json_atomic(tmp_path / "labels.json", [])
    assert not stale_file.exists()
    assert (tmp_path / "bundle" / "manifest.json").is_file()


def test_a_run_killed_between_the_two_renames_gets_its_old_output_back(tmp_path):
    """The replaced output was moved aside and the new one never arrived: put the old one back."""
    old = tmp_path / f".grandpa.old-{_host_tag()}-{_dead_pid()}"
    old.mkdir()
    (old / "train_config.json").write_text("{}", encoding="utf-8")
    clean_stale_temporaries(tmp_path / "grandpa")
    assert (tmp_path / "grandpa" / "train_config.json").is_file() and not old.exists()


def test_folder_sweep_removes_only_dead_runs_temporaries(tmp_path):
    dead, host = _dead_pid(), _host_tag()
    take = tmp_path / f".0003_我想喝水.wav.tmp-{host}-{dead}-abc"
    take.write_bytes(b"RIFF")
    live = tmp_path / f".0004_好.wav.tmp-{host}-{os.getpid()}-abc"
    live.write_bytes(b"RIFF")
    user_file = tmp_path / ".hidden.tmp-notes"  # not ours by name: left alone
    user_file.write_bytes(b"mine")
    assert clean_stale_temporaries_in(tmp_path) == [take]
    assert live.exists() and user_file.exists()


def test_read_json_file_turns_every_bad_file_into_one_error(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text("[" * 100000, encoding="utf-8")
    with pytest.raises(ResonanceError, match="nested too deeply") as info:
        read_json_file(path, "labels file", "fix it")
    assert info.value.hint == "fix it"
    path.write_bytes(b"\xff\xfe[]")
    with pytest.raises(ResonanceError, match="not UTF-8"):
        read_json_file(path, "labels file", "fix it")
    path.write_text("[1,]", encoding="utf-8")
    with pytest.raises(ResonanceError, match=r"not valid JSON.*line 1"):
        read_json_file(path, "labels file", "fix it")
    with pytest.raises(ResonanceError, match="not found"):
        read_json_file(tmp_path / "missing.json", "report", "fix it")
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"a": 1}]).encode())  # Notepad's byte-order mark
    assert read_json_file(path, "labels file", "fix it") == [{"a": 1}]


def test_file_lock_lets_one_process_at_a_time_in(tmp_path):
    """Two first uses of a cached model at once (two trainings, the suite's workers) import it once."""
    import multiprocessing

    from resonance.fsutil import file_lock

    lock, log = tmp_path / "sub" / ".x.lock", tmp_path / "log"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_hold, args=(lock, log, n)) for n in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    lines = log.read_text().split()
    assert sorted(lines) == ["in0", "in1", "out0", "out1"]
    assert lines[0][2:] == lines[1][3:] and lines[2][2:] == lines[3][3:], lines  # never two inside at once
    with file_lock(lock):  # released after each block
        pass


def _hold(lock, log, n):
    import time

    from resonance.fsutil import file_lock

    with file_lock(lock):
        with open(log, "a") as out:
            out.write(f"in{n}\n")
        time.sleep(0.3)
        with open(log, "a") as out:
            out.write(f"out{n}\n")
