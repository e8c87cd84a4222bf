"""Can a Jetson install the runtime? Resolve its dependencies for aarch64 as binary wheels only, without a Jetson.

A Jetson has no Rust or CMake toolchain a caregiver's technician should need, so a dependency without an
aarch64 wheel for JetPack's Python is a broken install there. This asks pip (``pip download --only-binary=:all:
--platform ... --python-version ...``) for exactly what the README's Jetson section installs:

* the package's base dependencies, read from pyproject.toml (a dependency added by any issue is covered
  without touching this file), minus onnxruntime, which comes from NVIDIA on a Jetson;
* the ``[mic]`` (``resonance listen``), ``[formats]`` (phone recordings) and ``[discovery]`` (mDNS) extras;

for each JetPack: 5 is Ubuntu 20.04 (Python 3.8, glibc 2.31), 6 is Ubuntu 22.04 (Python 3.10, glibc 2.35).
A wheel tagged for an older glibc (``manylinux_2_17`` … ``manylinux_2_N``) installs on a newer one.

pip evaluates environment markers for the machine it runs on, not for ``--platform``/``--python-version``
(``"importlib-metadata; python_version < '3.10'"`` is skipped on a 3.11 host). So markers are evaluated here for
the Jetson, on our requirements and, round by round, on the Requires-Dist of every wheel pip picked, until no
requirement that applies on the Jetson is missing.

Run as a script (``make jetson-check``) it prints what each JetPack gets and exits 1 when something has no
wheel; ``tests/test_jetson_wheels.py`` runs the same and skips when PyPI cannot be reached. Downloads go to a
scratch folder; pip's own HTTP cache keeps a repeated run fast.
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FROM_NVIDIA = ("onnxruntime", "onnxruntime-gpu")  # NVIDIA's Jetson wheel, not PyPI's (README)
EXTRAS = ("mic", "formats", "discovery")  # the runtime extras the README's Jetson section offers
MAX_ROUNDS = 5  # marker rounds; real dependency trees settle in one or two
PIP_TIMEOUT_S = 600
# pip's messages when the index cannot be reached at all (vs. a package that has no matching wheel)
_OFFLINE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Network is unreachable|ConnectTimeoutError|Could not fetch URL|ProxyError|Max retries exceeded"
)


@dataclass(frozen=True)
class Target:
    name: str
    python: str  # "3.8"
    python_full: str  # for markers on python_full_version
    glibc: Tuple[int, int]  # the newest manylinux_2_N the Jetson's glibc accepts

    def platforms(self) -> List[str]:
        """Every manylinux tag the Jetson's glibc accepts. pip does not widen ``--platform manylinux_2_31`` to
        older glibc versions by itself (given only that and manylinux2014 it takes soundfile's pure wheel, which
        lacks libsndfile, over its manylinux_2_28 one), so each is listed; manylinux2014 is manylinux_2_17."""
        major, newest = self.glibc
        return ["manylinux2014_aarch64"] + [f"manylinux_{major}_{n}_aarch64" for n in range(17, newest + 1)]

    def marker_environment(self) -> Dict[str, str]:
        return {
            "python_version": self.python,
            "python_full_version": self.python_full,
            "implementation_name": "cpython",
            "implementation_version": self.python_full,
            "platform_python_implementation": "CPython",
            "platform_machine": "aarch64",
            "platform_system": "Linux",
            "sys_platform": "linux",
            "os_name": "posix",
            "platform_release": "",
            "platform_version": "",
            "extra": "",
        }


TARGETS = (
    Target("JetPack 5 (L4T R35, Ubuntu 20.04)", "3.8", "3.8.10", (2, 31)),
    Target("JetPack 6 (L4T R36, Ubuntu 22.04)", "3.10", "3.10.12", (2, 35)),
)


@dataclass
class Resolution:
    target: Target
    requirements: List[str]  # what was asked for (markers applied)
    wheels: List[str] = field(default_factory=list)  # file names pip picked
    error: str = ""  # pip's complaint when something has no wheel
    offline: bool = False  # the index could not be reached: nothing was checked

    @property
    def ok(self) -> bool:
        return not self.error and not self.offline


def runtime_requirements(
    pyproject: Path = ROOT / "pyproject.toml", extras: Sequence[str] = EXTRAS
) -> List[str]:
    """The base dependencies and the given extras' requirements, as written in pyproject.toml."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    return wanted


def applicable(requirements: Sequence[str], target: Target) -> List[str]:
    """The requirements whose markers hold on ``target``, markers stripped, minus NVIDIA's onnxruntime."""
    env = target.marker_environment()
    kept = []
    for text in requirements:
        req = Requirement(text)
        if canonicalize_name(req.name) in FROM_NVIDIA:
            continue
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        kept.append(f"{req.name}{extras}{req.specifier}")
    return kept


def wheel_requirements(wheel: Path, target: Target, extras: Sequence[str] = ()) -> List[str]:
    """Requires-Dist of a wheel that apply on ``target`` (with the given extras of that wheel)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))
    env = target.marker_environment()
    applies = []
    for text in metadata.get_all("Requires-Dist") or []:
        req = Requirement(text)
        marker: Optional[Marker] = req.marker
        if marker is None or any(marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
            applies.append(text)
    return applies


def _wheel_name(wheel: str) -> str:
    return canonicalize_name(wheel.split("-")[0])


def _pip_download(requirements: Sequence[str], target: Target, dest: Path) -> subprocess.CompletedProcess:
    platforms = [arg for p in target.platforms() for arg in ("--platform", p)]
    command = [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--implementation", "cp",
        "--python-version", target.python, *platforms, "--dest", str(dest),
        "--no-input", "--progress-bar", "off", "--retries", "1", "--timeout", "30", *requirements,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)


def resolve(target: Target, requirements: Sequence[str], dest: Path) -> Resolution:
    """Download binary wheels of ``requirements`` and, round by round, of what they need on ``target``."""
    asked = applicable(requirements, target)
    result = Resolution(target, asked)
    todo = list(asked)
    requested_extras: Dict[str, set] = {}  # package -> extras some requirement asked for (e.g. foo[bar])
    for text in asked:
        req = Requirement(text)
        requested_extras.setdefault(canonicalize_name(req.name), set()).update(req.extras)
    for _ in range(MAX_ROUNDS):
        if not todo:
            break
        proc = _pip_download(todo, target, dest)
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            result.offline = bool(_OFFLINE.search(output))
            errors = [line for line in output.splitlines() if line.startswith("ERROR")]
            result.error = "\n".join(errors) or output[-2000:]
            break
        wheels = sorted(dest.glob("*.whl"))
        have = {_wheel_name(w.name) for w in wheels}
        needed: Dict[str, str] = {}
        for wheel in wheels:
            extras = requested_extras.get(_wheel_name(wheel.name), set())
            for text in applicable(wheel_requirements(wheel, target, sorted(extras)), target):
                req = Requirement(text)
                needed.setdefault(canonicalize_name(req.name), text)
                requested_extras.setdefault(canonicalize_name(req.name), set()).update(req.extras)
        todo = [req for name, req in sorted(needed.items()) if name not in have]
    result.wheels = sorted(w.name for w in dest.glob("*.whl"))
    return result


def check(
    targets: Sequence[Target] = TARGETS, requirements: Optional[Sequence[str]] = None
) -> List[Resolution]:
    requirements = runtime_requirements() if requirements is None else requirements
    results = []
    for target in targets:
        with tempfile.TemporaryDirectory(prefix="resonance-jetson-wheels-") as scratch:
            results.append(resolve(target, requirements, Path(scratch)))
    return results


def report(results: Sequence[Resolution]) -> str:
    lines = []
    for r in results:
        glibc = ".".join(map(str, r.target.glibc))
        head = f"{r.target.name}: Python {r.target.python}, manylinux aarch64 wheels up to glibc {glibc}"
        if r.offline:
            lines.append(f"? {head}: PyPI could not be reached, nothing checked\n  {r.error}")
        elif r.error:
            lines.append(f"✗ {head}: no binary wheel for something the runtime needs\n  {r.error}")
        else:
            lines.append(f"✓ {head}: {len(r.wheels)} wheels")
            lines += [f"    {w}" for w in r.wheels]
    return "\n".join(lines)


def main() -> int:
    requirements = runtime_requirements()
    print(
        f"runtime requirements from pyproject.toml (+ extras {', '.join(EXTRAS)}; onnxruntime from NVIDIA):"
    )
    print("  " + " ".join(requirements))
    results = check(requirements=requirements)
    print(report(results))
    if any(r.offline for r in results):
        return 2
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
