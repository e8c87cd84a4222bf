"""`resonance install-service`: the systemd unit it writes, parsed back, and its ExecStart really serving."""

from __future__ import annotations

import configparser
import getpass
import os
import shlex
import shutil
import stat
import sys
from pathlib import Path
from typing import List

import pytest
from helpers import Server, write_config

from resonance.runtime.service import ServiceOptions, private_tmp_warnings, systemd_quote

USER = getpass.getuser()


@pytest.fixture
def unit_dir(tmp_path) -> Path:
    folder = tmp_path / "systemd"
    folder.mkdir()
    return folder


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def exec_argv(value: str) -> List[str]:
    """ExecStart= as systemd splits it: double quotes with \\ escapes, then %% -> % and $$ -> $."""
    return [arg.replace("%%", "%").replace("$$", "$") for arg in shlex.split(value)]


def install(run_cli, unit_dir: Path, *args):
    return run_cli("install-service", "--unit-dir", unit_dir, "--user", USER, *args)


def test_unit_starts_serve_at_boot_as_the_user_with_this_installations_resonance(run_cli, unit_dir, tmp_path):
    models = tmp_path / "bundles"
    models.mkdir()
    proc = install(run_cli, unit_dir, "--models", models, "--config", "jetson-orin-nano")
    assert proc.returncode == 0, proc.stderr
    unit = unit_dir / "resonance.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert str(unit) in proc.stdout
    assert "sudo systemctl daemon-reload && sudo systemctl enable --now resonance" in proc.stdout
    parsed = parse_unit(unit.read_text(encoding="utf-8"))
    assert parsed["Unit"]["After"] == "network-online.target"
    assert parsed["Unit"]["Wants"] == "network-online.target"
    service = parsed["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == USER
    assert Path(service["WorkingDirectory"]).is_dir()
    assert parsed["Install"]["WantedBy"] == "multi-user.target"
    argv = exec_argv(service["ExecStart"])
    assert argv[0] == str(Path(os.path.abspath(sys.executable)).parent / "resonance")  # the venv's, absolute
    assert os.access(argv[0], os.X_OK)
    assert argv[1:] == ["serve", "--config", "jetson-orin-nano", "--models", str(models)]
    environment = service["Environment"]
    assert "ORT_DISABLE_TELEMETRY=1" in environment


def test_existing_unit_is_kept_without_force(run_cli, unit_dir, tmp_path):
    unit = unit_dir / "resonance.service"
    unit.write_text("[Service]\nExecStart=/bin/true  # the admin's own\n", encoding="utf-8")
    proc = install(run_cli, unit_dir, "--models", tmp_path)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "--force" in proc.stderr
    assert "the admin's own" in unit.read_text(encoding="utf-8")
    forced = install(run_cli, unit_dir, "--models", tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "the admin's own" not in unit.read_text(encoding="utf-8")


def test_dry_run_prints_the_unit_and_writes_nothing(run_cli, unit_dir, tmp_path):
    proc = install(
        run_cli,
        unit_dir,
        "--models",
        tmp_path,
        "--auth",
        "--retain",
        tmp_path / "kept",
        "--collect",
        tmp_path / "corrections",
        "--wyoming-port",
        "--wyoming-lan",
        "--wyoming-patient",
        "grandpa",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    assert list(unit_dir.iterdir()) == []
    argv = exec_argv(parse_unit(proc.stdout)["Service"]["ExecStart"])
    assert argv[argv.index("--models") + 1] == str(tmp_path)
    assert "--auth" in argv
    assert argv[argv.index("--retain") + 1] == str(tmp_path / "kept")
    assert argv[argv.index("--collect") + 1] == str(tmp_path / "corrections")
    assert argv[argv.index("--wyoming-port") + 1] == "10300" and "--wyoming-lan" in argv
    assert argv[argv.index("--wyoming-patient") + 1] == "grandpa"


def test_relative_paths_and_a_config_file_become_absolute(run_cli, unit_dir, tmp_path):
    config = write_config(tmp_path / "my-box.yaml")
    (tmp_path / "bundles").mkdir()
    proc = run_cli(
        "install-service",
        "--unit-dir",
        unit_dir,
        "--user",
        USER,
        "--models",
        "bundles",
        "--config",
        "my-box.yaml",
        "--dry-run",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    argv = exec_argv(parse_unit(proc.stdout)["Service"]["ExecStart"])
    assert argv[argv.index("--models") + 1] == str(tmp_path / "bundles")
    assert argv[argv.index("--config") + 1] == str(config)


@pytest.mark.parametrize(
    "name", ["plain", "with space", "100% sure", "$HOME", 'quote"d', "back\\slash", "张伟's bundles"]
)
def test_paths_survive_systemd_quoting(name):
    path = f"/srv/{name}/bundles"
    assert exec_argv(systemd_quote(path)) == [path]
    assert "%" not in systemd_quote(path).replace("%%", "")  # no lone % left for systemd to expand
    assert "$" not in systemd_quote(path).replace("$$", "")


def test_mistakes_are_caught_now_not_at_boot(run_cli, unit_dir, tmp_path):
    proc = run_cli(
        "install-service", "--unit-dir", unit_dir, "--user", "no-such-user-xyz", "--models", tmp_path
    )
    assert proc.returncode == 2 and "no user 'no-such-user-xyz'" in proc.stderr
    proc = install(run_cli, unit_dir, "--models", tmp_path, "--config", "toaster")
    assert proc.returncode == 2 and "unknown device config 'toaster'" in proc.stderr
    proc = install(run_cli, tmp_path / "nowhere", "--models", tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = install(run_cli, unit_dir, "--models", tmp_path, "--wyoming-lan")
    assert proc.returncode == 2 and "--wyoming-lan needs --wyoming-port" in proc.stderr
    assert list(unit_dir.iterdir()) == []
    with pytest.raises(Exception, match="line break"):
        systemd_quote("/srv/a\nb")


def test_paths_under_tmp_are_warned_about_private_tmp(run_cli, unit_dir):
    """PrivateTmp=yes hides the host's /tmp from the service: a unit naming one would never find its models."""
    proc = install(run_cli, unit_dir, "--models", "/tmp/x/models", "--collect", "/var/tmp/kept", "--dry-run")
    assert proc.returncode == 0, proc.stderr  # a warning, not a refusal: the unit is still printed
    assert "PrivateTmp=yes" in proc.stdout
    assert "--models /tmp/x/models is under /tmp, which the service cannot see" in proc.stderr
    assert "--collect /var/tmp/kept is under /var/tmp" in proc.stderr
    assert "move it to a lasting folder" in proc.stderr
    lasting = install(run_cli, unit_dir, "--models", "/srv/resonance/bundles", "--dry-run")
    # Only the folders are asked about here: the program itself may run from /tmp (a CI clone of the repo).
    assert lasting.returncode == 0 and "--models" not in lasting.stderr and "--collect" not in lasting.stderr


def test_a_resonance_installed_under_tmp_is_warned_about():
    options = ServiceOptions(
        models=Path("/srv/bundles"),
        config="/tmp/my-box.yaml",
        user=USER,
        home=Path("/home/care"),
        command=["/tmp/venv/bin/resonance"],
    )
    warnings = private_tmp_warnings(options)
    assert [w.split(" is under ")[0] for w in warnings] == [
        "the resonance program /tmp/venv/bin/resonance",
        "--config /tmp/my-box.yaml",
    ]
    assert "install resonance in a lasting place" in warnings[0]
    tmpfoo = ServiceOptions(Path("/tmpfoo/bundles"), "pc-cpu", USER, Path("/home/care"), command=["/opt/r"])
    assert private_tmp_warnings(tmpfoo) == []  # a name that only starts like /tmp


def test_missing_models_folder_is_a_note_not_an_error(run_cli, unit_dir, tmp_path):
    proc = install(run_cli, unit_dir, "--models", tmp_path / "later")
    assert proc.returncode == 0, proc.stderr
    assert "does not exist yet" in proc.stdout


def test_the_units_execstart_really_serves(run_cli, unit_dir, tmp_path, tiny_bundle):
    """Run ExecStart exactly as written (plus a loopback port for the test): a server comes up and answers."""
    models = tmp_path / "my bundles"  # a space: the quoting must hold
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    config = write_config(tmp_path / "test.yaml")
    proc = install(run_cli, unit_dir, "--models", models, "--config", config)
    assert proc.returncode == 0, proc.stderr
    service = parse_unit((unit_dir / "resonance.service").read_text(encoding="utf-8"))["Service"]
    env = dict(item.split("=", 1) for item in shlex.split(service["Environment"]))
    srv = Server(
        None, None, command=exec_argv(service["ExecStart"]), env=env, cwd=service["WorkingDirectory"]
    )
    try:
        assert srv.get("/health").json()["patients"] == 1
        assert srv.get("/patients").json()[0]["id"] == "p1"
    finally:
        srv.stop()
