"""ModelRegistry (real bundles, real Transcribers) and the app's in-process pieces: ids, reload, tokens, uploads."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import yaml
from helpers import copy_bundle, tone, wav, write_config

from resonance.errors import ResonanceError
from resonance.runtime.board import edit_board
from resonance.runtime.device_config import load_device_config
from resonance.runtime.models import (
    HINT_SEPARATOR,
    InvalidPatientId,
    ModelRegistry,
    UnknownPatient,
    check_patient_id,
)
from resonance.runtime.server import (
    ServerSettings,
    create_app,
    lan_addresses,
    load_or_create_token,
    urls_for,
)


@pytest.fixture
def config(tmp_path):
    return load_device_config(write_config(tmp_path / "test.yaml"))


@pytest.fixture
def models(tmp_path, tiny_bundle) -> Path:
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(tiny_bundle, root / "p1")
    return root


@pytest.mark.parametrize("good", ["p1", "grandpa", "anna_2", "ZHANG-wei", "张伟"])
def test_plain_patient_ids_are_accepted(good):
    assert check_patient_id(good) == good


@pytest.mark.parametrize("bad", ["../x", "..", ".", "a/b", "a\\b", "", " p1", "p1\n", "x" * 65, "a.b", "-p1"])
def test_ids_that_are_not_one_plain_folder_name_are_rejected(bad):
    with pytest.raises(InvalidPatientId):
        check_patient_id(bad)


def test_default_patient_only_when_there_is_exactly_one(models, config, tiny_bundle):
    registry = ModelRegistry(models, config)
    assert registry.get().patient == "p1"
    assert registry.get("p1").transcriber is registry.get().transcriber
    copy_bundle(tiny_bundle, models, "p2")
    registry.reload()
    assert registry.patients == ["p1", "p2"]
    with pytest.raises(InvalidPatientId, match="must say which"):
        registry.get()
    assert registry.get("p2").manifest.patient == "p2"
    with pytest.raises(UnknownPatient):
        registry.get("p3")


def test_folder_name_must_match_the_manifest(models, config, tiny_bundle):
    shutil.copytree(tiny_bundle, models / "renamed")  # manifest still says p1
    registry = ModelRegistry(models, config)
    assert registry.patients == ["p1"]
    assert "patient 'p1'" in registry.failed["renamed"]
    # p1's folder is beside it: a copy for another patient, not a renamed folder (tests/test_skipped_bundles.py)
    assert "is a copy of the bundle of patient 'p1'" in registry.failed["renamed"]
    assert "move the copy out" in registry.failed["renamed"]  # the hint travels with the reason


def test_reload_adds_updates_and_removes_with_an_atomic_swap(models, config, tiny_bundle):
    registry = ModelRegistry(models, config)
    before = registry.get("p1")
    assert not registry.reload().changed  # nothing on disk changed: nothing reloaded (no re-hashing)
    assert registry.get("p1") is before

    copy_bundle(tiny_bundle, models, "p2")
    report = registry.reload()
    assert (report.added, report.updated, report.removed) == (["p2"], [], [])

    manifest_path = models / "p1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["metrics"] = {"cer_after": 0.1}  # a re-export with new metrics
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    report = registry.reload()
    assert report.updated == ["p1"]
    after = registry.get("p1")
    assert after is not before
    assert after.manifest.metrics == {"cer_after": 0.1}
    # A request that took the old bundle before the swap still completes with it.
    assert isinstance(before.transcriber.transcribe(tone(0.5)).text, str)

    shutil.rmtree(models / "p2")
    assert registry.reload().removed == ["p2"]
    assert registry.patients == ["p1"]


def test_a_board_edit_is_picked_up_without_reloading_the_model(models, config, caplog):
    loads = []

    def counting_factory(folder, device_config):
        from resonance.runtime.models import default_transcriber_factory

        loads.append(folder.name)
        return default_transcriber_factory(folder, device_config)

    registry = ModelRegistry(models, config, factory=counting_factory)
    before = registry.get("p1")
    edit_board(models / "p1", add=["我想喝水", "帮我开灯"])
    report = registry.reload()
    after = registry.get("p1")
    assert report.boards == ["p1"] and not report.changed
    assert loads == ["p1"]  # loaded once, at start: the board alone is re-read
    assert after.transcriber.board.texts == ("我想喝水", "帮我开灯")
    assert after.transcriber.encoder is before.transcriber.encoder  # the same sessions
    assert before.transcriber.board.texts == ()  # a request holding the old bundle keeps the old board
    assert registry.reload().boards == []  # unchanged: nothing re-read

    # The page reads the board from /patients: recorded and added phrases apart, the plain list beside.
    (listed,) = create_app(registry, config).test_client().get("/patients").get_json()
    assert listed["phrases"] == ["我想喝水", "帮我开灯"] and listed["n_phrases"] == 2
    assert listed["board"] == [
        {"text": "我想喝水", "source": "added"},
        {"text": "帮我开灯", "source": "added"},
    ]

    (models / "p1" / "board.json").write_text("{broken", encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        registry.reload()
    assert registry.get("p1").transcriber.board.texts == ("我想喝水", "帮我开灯")  # the last good board
    assert "phrase board of 'p1' not reloaded" in caplog.text
    assert loads == ["p1"]


def test_a_broken_new_version_keeps_the_old_one_serving(models, config, caplog):
    registry = ModelRegistry(models, config)
    good = registry.get("p1")
    with open(models / "p1" / "decoder.onnx", "r+b") as fh:  # a copy in progress
        fh.truncate(100)
    with caplog.at_level(logging.ERROR):
        report = registry.reload()
    assert "p1" in report.failed
    assert registry.get("p1") is good
    assert "keeping the version already loaded" in caplog.text
    assert registry.reload().failed == {}  # unchanged since it failed: not re-tried every poll


def test_a_corrupt_bundle_beside_a_good_one_is_skipped(models, config, tiny_bundle, caplog):
    broken = copy_bundle(tiny_bundle, models, "broken")
    (broken / "tokenizer.json").write_text("{}", encoding="utf-8")
    (models / "notes.txt").write_text("not a bundle", encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        registry = ModelRegistry(models, config)
    assert registry.patients == ["p1"]
    assert "sha256" in registry.failed["broken"]
    assert "broken" in caplog.text


def _adapter(folder: Path) -> Path:
    """What `resonance train` leaves: train_config.json marks it (the weights do not matter here)."""
    folder.mkdir(parents=True)
    (folder / "train_config.json").write_text('{"base_model": "pypi:whisper-base"}', encoding="utf-8")
    (folder / "checkpoint-100").mkdir()  # a folder inside that is no bundle either
    return folder


def test_an_adapter_as_the_models_folder_is_called_one(tmp_path, config):
    adapter = _adapter(tmp_path / "adapters" / "grandpa")
    error = ModelRegistry(adapter, config).no_patient_error()
    assert f"'{adapter}' is an adapter (made by `resonance train`), not a folder of bundles" in error.message
    assert f"resonance export --adapter {adapter} --out bundles/<patient>" in error.hint


def test_an_adapter_among_the_bundles_is_called_one(models, config):
    _adapter(models / "grandpa")
    registry = ModelRegistry(models, config)
    assert registry.patients == ["p1"]
    assert "'grandpa' is an adapter" in registry.failed["grandpa"]
    # Export refuses to write onto its own adapter: the hint moves it out first, then exports it into place.
    assert f"move it out of {models} (e.g. to adapters/grandpa)" in registry.failed["grandpa"]
    assert f"--adapter adapters/grandpa --out {models / 'grandpa'}" in registry.failed["grandpa"]


def test_a_single_broken_bundle_says_it_is_one_and_names_its_parent(tmp_path, config, tiny_bundle):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundles", "p1")
    (bundle / "tokenizer.json").write_text("{}", encoding="utf-8")
    registry = ModelRegistry(bundle, config)
    assert registry.single_bundle and registry.patients == []
    error = registry.no_patient_error()
    assert f"'{bundle}' is one patient's bundle, and it cannot be served" in error.message
    assert "sha256" in error.message  # why, from the bundle check
    assert f"--models {tmp_path / 'bundles'}" in error.hint


def test_a_folder_above_the_bundles_names_the_one_to_pass(tmp_path, config, tiny_bundle):
    run = tmp_path / "runs" / "demo"
    copy_bundle(tiny_bundle, run / "bundles", "p1")
    error = ModelRegistry(run, config).no_patient_error()
    assert "its folder 'bundles' holds the bundles" in error.message
    assert error.hint == f"pass --models {run / 'bundles'}"
    # ... also when that folder's name is no patient id (a space), so the registry skipped it unnamed
    other = tmp_path / "runs" / "other"
    copy_bundle(tiny_bundle, other / "my bundles", "p1")
    error = ModelRegistry(other, config).no_patient_error()
    assert "its folder 'my bundles' holds the bundles" in error.message
    assert error.hint == f"pass --models '{other / 'my bundles'}'"  # quoted: it can be pasted as it is


def test_an_empty_models_folder_says_it_has_no_bundle_folders(tmp_path, config):
    (tmp_path / "empty").mkdir()
    error = ModelRegistry(tmp_path / "empty", config).no_patient_error()
    assert "no usable bundle" in error.message and "it has no bundle folders" in error.message


def test_the_banner_names_the_base_model_not_a_cache_path(models, config):
    from resonance.runtime.server.lan import banner

    base = Path(ModelRegistry(models, config).get("p1").manifest.base_model)
    assert base.is_absolute()  # the tiny bundle was exported from a local folder, as the demo's is
    text = banner(ModelRegistry(models, config), config, ServerSettings(), 8000, models)
    assert f"patient p1: {base.name}, not fine-tuned, fp32, zh" in text
    assert str(base) not in text


def test_the_poller_picks_up_a_new_bundle(models, config, tiny_bundle):
    registry = ModelRegistry(models, config, poll_interval_s=0.2)
    try:
        copy_bundle(tiny_bundle, models, "p2")
        deadline = time.monotonic() + 30
        while "p2" not in registry.patients and time.monotonic() < deadline:
            time.sleep(0.1)
        assert registry.patients == ["p1", "p2"]
    finally:
        registry.stop_polling()


def test_precision_mismatch_is_a_warning_not_an_error(models, tmp_path, caplog):
    int8_device = load_device_config(write_config(tmp_path / "int8.yaml", precision="int8"))
    with caplog.at_level(logging.WARNING):
        registry = ModelRegistry(models, int8_device)
    assert registry.patients == ["p1"]
    assert "is fp32 but device config 'test' expects int8" in caplog.text


def test_an_int8_bundle_for_another_cpu_is_a_warning(tmp_path, tiny_bundle, caplog):
    """The manifest says which CPU the int8 weights were made for; the device config which CPU it has."""
    from dataclasses import replace

    from resonance.runtime.bundle import load_manifest
    from resonance.runtime.device_sessions import warn_on_precision

    manifest = replace(load_manifest(tiny_bundle), precision="int8", quantization={"int8_preset": "avx512"})
    arm = load_device_config(write_config(tmp_path / "arm.yaml", precision="int8", int8_preset="arm64"))
    with caplog.at_level(logging.WARNING):
        warn_on_precision("p1", manifest, arm)
    assert "quantised for avx512 CPUs, device config 'test' expects arm64" in caplog.text
    assert "--int8-preset arm64" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_on_precision("p1", manifest, arm.replace(int8_preset="avx512"))
    assert caplog.text == ""


def test_uploads_stay_in_memory(models, config):
    """Werkzeug would spool a >500 KB upload to a temp file; audio must never touch the disk."""
    app = create_app(ModelRegistry(models, config), config)
    big = wav(tone(20.0))  # 640 KB
    with app.test_request_context(
        "/transcribe",
        method="POST",
        data={"file": (io.BytesIO(big), "big.wav")},
        content_type="multipart/form-data",
    ):
        from flask import request

        assert type(request.files["file"].stream) is io.BytesIO
        assert request.files["file"].read() == big


def test_flask_app_answers_json_500_on_an_unexpected_error(models, config):
    """A bug in a transcription is a JSON 500 for that request, not a dead server.

    The one stand-in in these tests: no real component fails on purpose; the bundle itself is still real.
    """

    class Exploding:
        manifest = None
        providers = ("CPUExecutionProvider",)

        def transcribe(self, audio, **options):
            raise RuntimeError("boom")

    registry = ModelRegistry(models, config, factory=lambda folder, device: Exploding())
    client = create_app(registry, config, ServerSettings()).test_client()
    response = client.post("/transcribe", data={"file": (io.BytesIO(wav(tone(0.5))), "a.wav")})
    assert response.status_code == 500
    assert response.json["error"]["code"] == "internal_error"
    assert "boom" not in response.json["error"]["message"]  # internals stay in the log
    ok = client.get("/health")
    assert ok.status_code == 200


def test_token_file_is_created_0600_and_reused(tmp_path):
    path = tmp_path / "cfg" / "token"
    token, created = load_or_create_token(path)
    assert created and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path) == (token, False)
    os.chmod(path, 0o644)
    with pytest.raises(ResonanceError, match="other users"):
        load_or_create_token(path)


def test_lan_url_detection_sends_nothing_and_always_answers():
    addresses = lan_addresses()
    assert addresses
    for ip in addresses:
        assert len(ip.split(".")) == 4
    assert urls_for("127.0.0.1", 8000) == ["http://127.0.0.1:8000/transcribe"]
    everywhere = urls_for("0.0.0.0", 8000)
    assert everywhere[-1] == "http://127.0.0.1:8000/transcribe"
    assert all(url.endswith(":8000/transcribe") for url in everywhere)


def test_auto_threads_share_the_cpus_between_concurrent_requests(tmp_path):
    from resonance.runtime.device_sessions import session_threads

    cpus = os.cpu_count() or 1
    auto = load_device_config(
        write_config(tmp_path / "a.yaml", intra_op_threads=0, max_concurrent_requests=2)
    )
    assert session_threads(auto) == max(1, cpus // 2)
    assert session_threads(auto) * auto.max_concurrent_requests <= max(cpus, 2)
    fixed = load_device_config(write_config(tmp_path / "f.yaml", intra_op_threads=3))
    assert session_threads(fixed) == 3


# -- issue #12: validated manifests, bundles loaded on first use within a memory budget -----------------------


def _edit_manifest(bundle: Path, **sections) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key, value in sections.items():
        if isinstance(value, dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize(
    "change, says",
    [
        ({"audio": {"window_seconds": 0}}, "'audio.window_seconds' must be > 0 and <= 30, got 0"),
        ({"audio": {"n_mels": "eighty"}}, "'audio.n_mels' must be an integer, got str 'eighty'"),
        ({"tokens": {"eot": 10**9}}, "'tokens.eot' must be token ids below vocab_size"),
        ({"task": "summarize"}, "'task' must be one of"),
    ],
)
def test_a_bad_manifest_value_skips_the_bundle_with_one_line_and_changes_no_default(
    models, config, tiny_bundle, caplog, change, says
):
    """Finding 7: `window_seconds: 0` or `n_mels: "eighty"` loaded, then every request was a 500, and the
    extra patient made requests without a patient id fail."""
    evil = copy_bundle(tiny_bundle, models, "evil")
    _edit_manifest(evil, **change)
    with caplog.at_level(logging.ERROR):
        registry = ModelRegistry(models, config)
    assert registry.patients == ["p1"]
    assert says in registry.failed["evil"]
    assert registry.get().patient == "p1"  # a request without a patient id still goes to p1
    lines = [r for r in caplog.records if "evil" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage()
    registry.reload()
    assert [r for r in caplog.records if "evil" in r.getMessage()] == lines  # not again at every poll


def test_a_manifest_cannot_point_outside_its_bundle(models, config, tiny_bundle):
    evil = copy_bundle(tiny_bundle, models, "evil")
    manifest = json.loads((evil / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["tokenizer"]["path"] = "../p1/tokenizer.json"
    (evil / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    registry = ModelRegistry(models, config)
    assert "file name inside the bundle folder" in registry.failed["evil"]


def test_bundles_load_on_first_use_and_the_least_recently_used_is_unloaded(models, config, tiny_bundle):
    for patient in ("p2", "p3"):
        copy_bundle(tiny_bundle, models, patient)
    size_mb = sum(p.stat().st_size for p in (models / "p1").iterdir()) / 2**20
    registry = ModelRegistry(models, config, memory_budget_mb=2.5 * size_mb)  # room for two
    assert registry.patients == ["p1", "p2", "p3"]
    assert [b.patient for b in registry.bundles()] == ["p1", "p2"]  # loaded at start while they fit
    held = registry.get("p2")
    registry.get("p1")  # p2 is now the least recently used
    p3 = registry.get("p3")  # loads on first use, unloads p2
    assert [b.patient for b in registry.bundles()] == ["p1", "p3"]
    assert registry.loaded_bytes <= registry.memory_budget_bytes
    assert isinstance(held.transcriber.transcribe(tone(0.5)).text, str)  # a request holding it finishes
    assert registry.get("p3") is p3
    again = registry.get("p2")  # back, in place of p1
    assert again is not held and [b.patient for b in registry.bundles()] == ["p2", "p3"]


def test_a_bundle_over_the_whole_budget_still_loads_alone(models, config):
    registry = ModelRegistry(models, config, memory_budget_mb=1)
    assert [b.patient for b in registry.bundles()] == ["p1"]
    assert registry.get("p1").patient == "p1"


def test_reloading_an_unloaded_bundle_keeps_it_unloaded(models, config, tiny_bundle):
    copy_bundle(tiny_bundle, models, "p2")
    size_mb = sum(p.stat().st_size for p in (models / "p1").iterdir()) / 2**20
    registry = ModelRegistry(models, config, memory_budget_mb=1.5 * size_mb)
    assert [b.patient for b in registry.bundles()] == ["p1"]
    _edit_manifest(models / "p2", metrics={"cer_after": 0.2})
    assert registry.reload().updated == ["p2"]
    assert [b.patient for b in registry.bundles()] == ["p1"]  # checked again, not loaded
    assert registry.get("p2").manifest.metrics == {"cer_after": 0.2}


def test_the_ignored_folder_warning_is_not_repeated_at_every_poll(models, config, caplog):
    """Finding 9: "ignoring folder" was logged again at every reload poll."""
    (models / "not a patient!").mkdir()
    with caplog.at_level(logging.WARNING):
        registry = ModelRegistry(models, config)
        for _ in range(3):
            registry.reload()
    assert caplog.text.count("ignoring folder 'not a patient!'") == 1


def test_the_token_is_printed_only_to_a_person_at_a_terminal(tmp_path):
    """Finding 9: the token was printed on first start, into the journal under systemd."""
    from resonance.runtime.server.auth import token_note

    path = tmp_path / "token"
    logged = token_note(path, "s3cret-token-value", created=True, interactive=False)
    assert "s3cret" not in logged and f"cat {path}" in logged
    assert "s3cret-token-value" in token_note(path, "s3cret-token-value", created=True, interactive=True)
    assert "s3cret" not in token_note(path, "s3cret-token-value", created=False, interactive=True)


# -- what a user reads about a skipped bundle (doctor, log, banner) ----------------------------------------------


@pytest.fixture
def copied(models, tiny_bundle) -> Path:
    """p1's bundle, and `cp -r bundles/p1 bundles/grandma`: a copy made for a new patient."""
    shutil.copytree(tiny_bundle, models / "grandma")
    return models


def test_a_copied_bundle_is_called_a_copy_and_the_log_line_separates_the_hint(copied, config, caplog):
    with caplog.at_level(logging.ERROR, logger="resonance.runtime.models"):
        registry = ModelRegistry(copied, config)
    why = registry.failed["grandma"]
    assert "is a copy of the bundle of patient 'p1'" in why
    assert "rename" not in why  # a folder 'p1' exists: renaming the copy to it cannot be the advice
    assert f"move the copy out of {copied}" in why and "--force" not in why  # never replaced by a hint
    assert f"`resonance export --adapter adapters/grandma --out {copied / 'grandma'}`" in why
    [logged] = [r.getMessage() for r in caplog.records if "grandma" in r.getMessage()]
    assert HINT_SEPARATOR in logged and "' what to do:" not in logged


def test_a_renamed_bundle_is_still_told_to_take_its_patients_name(tmp_path, tiny_bundle, config):
    models = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, models / "renamed")  # its manifest says p1, and there is no folder p1
    reason = ModelRegistry(models, config).skip_reasons["renamed"]
    assert reason.fix.startswith("rename the folder to 'p1'")


def test_the_doctor_prints_a_skipped_bundles_hint_on_its_own_line(copied, config, tmp_path):
    from resonance.runtime.doctor import checks
    from resonance.runtime.doctor.checks import Context
    from resonance.runtime.doctor.findings import Report, format_report
    from resonance.runtime.doctor.machine import Machine

    findings = checks.check_bundles(Machine(), Context(config, {}, copied))
    lines = format_report(Report("test", "--config", findings), ["bundles"]).splitlines()
    [index] = [i for i, line in enumerate(lines) if line.startswith("  ✗ grandma: the server would skip it")]
    assert "what to do" not in lines[index]
    assert lines[index + 1].startswith("      → move the copy out of")


def test_the_banner_leaves_out_a_missing_description(copied, tmp_path):
    from resonance.runtime.server import ServerSettings
    from resonance.runtime.server.lan import banner

    path = write_config(tmp_path / "old.yaml", name="old")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    del data["description"]  # a config written before descriptions, or by hand
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    config = load_device_config(path)
    text = banner(ModelRegistry(copied, config), config, ServerSettings(), 8000, copied)
    assert text.splitlines()[0].endswith("on 'old'")
    assert "SKIPPED grandma: bundle folder 'grandma' is a copy" in text and HINT_SEPARATOR in text
