"""Deploying a patient's new bundle atomically, keeping the old one, rolling back; the board moves along."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
from helpers import copy_bundle

from resonance.errors import ResonanceError
from resonance.fsutil import exchange_paths
from resonance.runtime.board import edit_board, read_board
from resonance.runtime.bundle import BundleError, load_manifest
from resonance.runtime.versions import (
    NOT_DEPLOYED,
    REPLACED,
    ROLLED_BACK,
    deploy,
    keep,
    rollback,
    versions,
)


def _mark(bundle, created):
    """Tell bundles apart by the manifest's export time (an unhashed field)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["created"] = created
    path.write_text(json.dumps(manifest), encoding="utf-8")


@pytest.fixture
def models(tmp_path, tiny_bundle):
    root = tmp_path / "bundles"
    root.mkdir()
    _mark(copy_bundle(tiny_bundle, root, "p1"), "v1")
    return root


def _candidate(models, tiny_bundle, created):
    staged = models / f".p1.candidate-{created}"
    shutil.copytree(tiny_bundle, staged)
    _mark(staged, created)
    return staged


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not exchange_paths(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_deploy_keeps_the_old_bundle_and_the_caregivers_board(models, tiny_bundle):
    served = models / "p1"
    edit_board(served, add=["我想回家"])
    kept = deploy(served, _candidate(models, tiny_bundle, "v2"))
    assert load_manifest(served).created == "v2"
    assert load_manifest(kept).created == "v1" and kept.name.endswith("-" + REPLACED)
    assert read_board(served).texts == ("我想回家",)  # the caregiver's addition moved with the patient
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == ["p1"]  # no candidate left

    deploy(served, _candidate(models, tiny_bundle, "v3"))
    assert [(v.kind, v.manifest.created) for v in versions(served)] == [(REPLACED, "v2"), (REPLACED, "v1")]

    back = rollback(served)  # v3 -> v2
    assert back.manifest.created == "v2" and load_manifest(served).created == "v2"
    back = rollback(served)  # the next older one, not v3 again
    assert back.manifest.created == "v1" and load_manifest(served).created == "v1"
    assert sorted(v.manifest.created for v in versions(served) if v.kind == ROLLED_BACK) == ["v2", "v3"]
    assert read_board(served).texts == ("我想回家",)
    with pytest.raises(ResonanceError, match="no earlier bundle"):
        rollback(served)
    name = next(v.name for v in versions(served) if v.manifest.created == "v3")
    assert rollback(served, to=name).manifest.created == "v3" and load_manifest(served).created == "v3"
    with pytest.raises(ResonanceError, match="no version 'nope'"):
        rollback(served, to="nope")
    # After that roll forward, plain rollback goes back to the model served before it (v1, now "rolled
    # back"), not to v2, nor does it say there is nothing earlier (a new user's audit)
    assert rollback(served).manifest.created == "v1"
    assert rollback(served, to=next(v.name for v in versions(served) if v.manifest.created == "v3"))
    deploy(served, _candidate(models, tiny_bundle, "v4"))
    assert rollback(served).manifest.created == "v3"  # the one v4 replaced, not v2 rolled back long ago
    assert [v.manifest.created for v in versions(served)] == ["v4", "v1", "v2"]  # the order they left service


def test_a_wrong_or_damaged_candidate_is_refused_and_nothing_moves(models, tiny_bundle, tmp_path):
    served = models / "p1"
    other = _candidate(models, tiny_bundle, "v2")
    manifest = json.loads((other / "manifest.json").read_text(encoding="utf-8"))
    (other / "manifest.json").write_text(json.dumps({**manifest, "patient": "p2"}), encoding="utf-8")
    with pytest.raises(BundleError, match="--patient p1"):
        deploy(served, other)
    broken = _candidate(models, tiny_bundle, "v3")
    with open(broken / "decoder.onnx", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(BundleError):
        deploy(served, broken)
    assert load_manifest(served).created == "v1" and versions(served) == []


def test_a_server_polling_during_deploys_always_finds_the_patient(models, tiny_bundle):
    """The registry lists the models folder while bundles are swapped: the patient is never missing."""
    served, stop, missing = models / "p1", threading.Event(), []

    def watch():
        while not stop.is_set():
            if not (served / "manifest.json").is_file():
                missing.append(1)

    if not exchange_paths(models / "p1", models / "p1"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for n in range(5):
            deploy(served, _candidate(models, tiny_bundle, f"v{n + 2}"))
    finally:
        stop.set()
        watcher.join()
    assert not missing and len(versions(served)) == 5


def test_a_candidate_kept_aside_is_listed_and_can_be_deployed(models, tiny_bundle):
    served = models / "p1"
    aside = keep(served, _candidate(models, tiny_bundle, "v2"), NOT_DEPLOYED)
    assert [v.kind for v in versions(served)] == [NOT_DEPLOYED]
    with pytest.raises(ResonanceError, match="no earlier bundle"):
        rollback(served)  # a not-deployed candidate is never put back without naming it
    assert rollback(served, to=aside.name).manifest.created == "v2"


def test_rollback_cli_lists_puts_back_and_says_what_to_do(models, tiny_bundle, run_cli):
    served = models / "p1"
    proc = run_cli("rollback", "--bundle", served)
    assert proc.returncode == 2 and "no earlier bundle" in proc.stderr and "--list" in proc.stderr
    deploy(served, _candidate(models, tiny_bundle, "v2"))
    proc = run_cli("rollback", "--bundle", served, "--list", check=True)
    assert proc.stdout.count(REPLACED) == 1 and "exported v1" in proc.stdout
    assert load_manifest(served).created == "v2"  # --list changes nothing
    proc = run_cli("rollback", "--bundle", served, check=True)
    assert load_manifest(served).created == "v1" and "serving " in proc.stdout
    assert [v.kind for v in versions(served)] == [ROLLED_BACK]  # v2 kept, not deleted
    proc = run_cli("rollback", "--bundle", served, "--to", "nonesuch")
    assert proc.returncode == 2 and "no version 'nonesuch'" in proc.stderr
