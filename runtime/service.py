"""`resonance install-service`: a systemd unit that starts `resonance serve` at boot (Linux PCs and Jetsons).

It only writes the unit file; enabling it (``systemctl daemon-reload && systemctl enable --now resonance``)
stays with the administrator, who sees exactly what will run. The unit calls this installation's
``resonance`` by absolute path, so it keeps working without an activated virtual environment.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence, Tuple

from resonance import __version__
from resonance.errors import ResonanceError
from resonance.fsutil import refuse_to_overwrite, write_text_atomic

log = logging.getLogger(__name__)

UNIT_NAME = "resonance.service"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
ENABLE_COMMAND = "sudo systemctl daemon-reload && sudo systemctl enable --now resonance"
RESTART_SEC = 10  # a failed start (e.g. bundles on a drive not yet mounted) is retried this often, forever
# Arguments systemd takes as they are; anything else is double-quoted (spaces, quotes, backslashes ...).
_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# The unit's PrivateTmp=yes gives the server a /tmp and /var/tmp of its own: the host's are out of its sight
# (and emptied at boot or after days unused), so nothing the unit names may lie there.
PRIVATE_TMP = (PurePosixPath("/tmp"), PurePosixPath("/var/tmp"))


@dataclass(frozen=True)
class ServiceOptions:
    models: Path  # the folder of patient bundles (absolute in the unit)
    config: str  # packaged device config name, or the absolute path of a YAML file
    user: str  # the account the server runs as (never root by default)
    home: Path  # that user's home: working directory, ~/.config/resonance/token, TensorRT cache
    auth: bool = False  # pass --auth: clients need the bearer token
    retain: Optional[Path] = None  # pass --retain DIR (absolute)
    collect: Optional[Path] = None  # pass --collect DIR (absolute): keep the page's corrections
    wyoming_port: Optional[int] = None  # pass --wyoming-port PORT: Home Assistant's Wyoming protocol too
    wyoming_lan: bool = False  # pass --wyoming-lan: Home Assistant on another machine
    wyoming_patient: Optional[str] = None  # pass --wyoming-patient ID: whose voice Home Assistant sends
    command: Sequence[str] = ()  # argv that runs `resonance` (default: this installation's, by absolute path)


def resonance_command() -> List[str]:
    """This installation's `resonance` console script, by absolute path (a venv's bin/ is not on root's PATH).

    ``sys.executable`` is deliberately not resolved: in a venv it is a symlink to the system Python, and
    following it would lose the venv's packages.
    """
    bin_dir = Path(os.path.abspath(sys.executable)).parent
    script = bin_dir / ("resonance.exe" if os.name == "nt" else "resonance")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    # e.g. a source checkout run with `python -m resonance.cli`
    return [os.path.abspath(sys.executable), "-m", "resonance.cli"]


def systemd_quote(arg: str) -> str:
    """One ExecStart= argument: systemd expands %specifiers and $VARIABLES, so those are doubled too."""
    if "\n" in arg or "\r" in arg:
        raise ResonanceError(f"a line break in {arg!r} cannot go into a systemd unit", "rename the folder")
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def serve_argv(options: ServiceOptions) -> List[str]:
    argv = [*(options.command or resonance_command()), "serve", "--config", options.config]
    argv += ["--models", str(options.models)]
    if options.auth:
        argv.append("--auth")
    if options.retain is not None:
        argv += ["--retain", str(options.retain)]
    if options.collect is not None:
        argv += ["--collect", str(options.collect)]
    if options.wyoming_port is not None:
        argv += ["--wyoming-port", str(options.wyoming_port)]
        if options.wyoming_lan:
            argv.append("--wyoming-lan")
        if options.wyoming_patient:
            argv += ["--wyoming-patient", options.wyoming_patient]
    return argv


def unit_text(options: ServiceOptions) -> str:
    exec_start = " ".join(systemd_quote(a) for a in serve_argv(options))
    home = str(options.home).replace("%", "%%")
    return f"""\
# Written by `resonance install-service` (resonance {__version__}).
# After editing: systemctl daemon-reload && systemctl restart resonance.  Logs: journalctl -u resonance -f
[Unit]
Description=Resonance personal speech recognition (LAN API and web page for the caregiver)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={options.user}
WorkingDirectory={home}
# PYTHONUNBUFFERED: print() reaches the journal at once. ORT_DISABLE_TELEMETRY: no onnxruntime usage
# telemetry (a device id, the OS, paths, kept in ~/.cache to upload) on a patient's device.
# MALLOC_ARENA_MAX: fewer glibc malloc arenas, ~20 % less resident memory after warm-up (resonance loadtest).
Environment=PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1 MALLOC_ARENA_MAX=2
ExecStart={exec_start}
Restart=on-failure
RestartSec={RESTART_SEC}
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=full

[Install]
WantedBy=multi-user.target
"""


def default_user() -> str:
    """Who ran the command; under sudo, the user who typed sudo (the service should not run as root)."""
    import getpass

    return os.environ.get("SUDO_USER") or getpass.getuser()


def home_of(user: str) -> Path:
    try:
        import pwd
    except ImportError as exc:  # Windows: there is no systemd either
        raise ResonanceError(
            "install-service needs Linux with systemd", "start `resonance serve` yourself"
        ) from exc
    try:
        return Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        raise ResonanceError(
            f"there is no user '{user}' on this machine", "pass --user with an existing account"
        ) from None


def resolve_config(config: str) -> str:
    """Check the device config now (a typo would otherwise surface at boot, in the journal)."""
    from resonance.runtime.device_config import load_device_config

    loaded = load_device_config(config)
    if loaded.source.startswith("resonance.device_configs/"):
        return config
    return str(Path(config).expanduser().absolute())


def private_tmp_of(path: Path) -> Optional[PurePosixPath]:
    """The /tmp or /var/tmp that ``path`` lies under (hidden from the server by PrivateTmp=yes), else None."""
    where = PurePosixPath(os.path.normpath(str(path)))
    return next((tmp for tmp in PRIVATE_TMP if where == tmp or tmp in where.parents), None)


def hidden_paths(options: ServiceOptions) -> List[Tuple[str, Path]]:
    """What the unit names under /tmp or /var/tmp, as (which argument, path): the server would not find it."""
    named: List[Tuple[str, Optional[Path]]] = [
        ("the resonance program", Path((options.command or resonance_command())[0])),
        ("--models", options.models),
        ("--retain", options.retain),
        ("--collect", options.collect),
    ]
    if options.config.startswith("/"):  # a YAML file, not a packaged config's name
        named.append(("--config", Path(options.config)))
    return [(what, path) for what, path in named if path is not None and private_tmp_of(path) is not None]


def private_tmp_warnings(options: ServiceOptions) -> List[str]:
    """One warning per path the service could not reach, saying where to move it."""
    warnings = []
    for what, path in hidden_paths(options):
        fix = (
            "install resonance in a lasting place (e.g. a venv under /home/<user>/) and run its install-service"
            if what == "the resonance program"
            else f"move it to a lasting folder (e.g. under /home/<user>/ or /srv/) and pass that as {what}"
        )
        warnings.append(
            f"{what} {path} is under {private_tmp_of(path)}, which the service cannot see (the unit's "
            f"PrivateTmp=yes gives it a /tmp and /var/tmp of its own, and files there are deleted in time): {fix}"
        )
    return warnings


def install_service(
    options: ServiceOptions, unit_dir: Path, force: bool = False, dry_run: bool = False
) -> str:
    """Write ``unit_dir/resonance.service`` (or only return its text with ``dry_run``); returns the text.

    Paths under /tmp the server could not reach are warned about (logged), not refused: a dry run is read
    before anything moves, and trials and tests live there.
    """
    text = unit_text(options)
    for warning in private_tmp_warnings(options):
        log.warning("%s", warning)
    if dry_run:
        return text
    unit_dir = Path(unit_dir)
    if not unit_dir.is_dir():
        raise ResonanceError(
            f"unit folder {unit_dir} does not exist",
            f"is this a systemd system? the usual folder is {DEFAULT_UNIT_DIR} (--unit-dir)",
        )
    path = unit_dir / UNIT_NAME
    refuse_to_overwrite(path, force, "systemd unit")
    try:
        write_text_atomic(path, text)
        # Units are world-readable by convention; this one holds no secret (the token stays in its own file).
        os.chmod(path, 0o644)
    except PermissionError as exc:
        raise ResonanceError(
            f"no permission to write {path}",
            f"run it with sudo and this installation's resonance: sudo {resonance_command()[0]} install-service ...",
        ) from exc
    return text
