"""What a user reads about a bundle the server skips: the doctor's ✗ line and its hint, the log line, the
advice for a copied bundle; and the start banner of a device config without a description."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import write_config

from resonance.runtime.device_config import load_device_config
from resonance.runtime.models import HINT_SEPARATOR, ModelRegistry


@pytest.fixture
def config(tmp_path):
    return load_device_config(write_config(tmp_path / "test.yaml"))


@pytest.fixture
def models(tmp_path, tiny_bundle) -> Path:
    """p1's bundle, and `cp -r bundles/p1 bundles/grandma`: a copy made for a new patient."""
    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, root / "p1")
    shutil.copytree(tiny_bundle, root / "grandma")
    return root


def test_a_copied_bundle_is_called_a_copy_and_the_log_line_separates_the_hint(models, config, caplog):
    with caplog.at_level(logging.ERROR, logger="resonance.runtime.models"):
        registry = ModelRegistry(models, config)
    why = registry.failed["grandma"]
    assert "is a copy of the bundle of patient 'p1'" in why
    assert "rename" not in why  # a folder 'p1' exists: renaming the copy to it cannot be the advice
    assert f"move the copy out of {models}" in why and "--force" not in why  # never replaced by a hint
    assert f"`resonance export --adapter adapters/grandma --out {models / 'grandma'}`" in why
    [logged] = [r.getMessage() for r in caplog.records if "grandma" in r.getMessage()]
    assert HINT_SEPARATOR in logged and "' what to do:" not in logged


def test_a_renamed_bundle_is_still_told_to_take_its_patients_name(tmp_path, tiny_bundle, config):
    models = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, models / "renamed")  # its manifest says p1, and there is no folder p1
    reason = ModelRegistry(models, config).skip_reasons["renamed"]
    assert reason.fix.startswith("rename the folder to 'p1'")


def test_the_doctor_prints_a_skipped_bundles_hint_on_its_own_line(models, config, tmp_path):
    from resonance.runtime.doctor import checks
    from resonance.runtime.doctor.checks import Context
    from resonance.runtime.doctor.findings import Report, format_report
    from resonance.runtime.doctor.machine import Machine

    findings = checks.check_bundles(Machine(), Context(config, {}, models))
    lines = format_report(Report("test", "--config", findings), ["bundles"]).splitlines()
    [index] = [i for i, line in enumerate(lines) if line.startswith("  ✗ grandma: the server would skip it")]
    assert "what to do" not in lines[index]
    assert lines[index + 1].startswith("      → move the copy out of")


def test_the_banner_leaves_out_a_missing_description(models, tmp_path):
    from resonance.runtime.server import ServerSettings
    from resonance.runtime.server.lan import banner

    path = write_config(tmp_path / "old.yaml", name="old")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    del data["description"]  # a config written before descriptions, or by hand
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    config = load_device_config(path)
    text = banner(ModelRegistry(models, config), config, ServerSettings(), 8000, models)
    assert text.splitlines()[0].endswith("on 'old'")
    assert "SKIPPED grandma: bundle folder 'grandma' is a copy" in text and HINT_SEPARATOR in text
