"""The runtime installs on a Jetson from binary wheels (JetPack 5: Python 3.8, JetPack 6: Python 3.10).

The resolution itself needs PyPI and is skipped with a reason where it cannot be reached; the marker logic it
relies on (pip evaluates markers for this machine, not the Jetson) is checked offline.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import jetson_wheels
import pytest
from jetson_wheels import TARGETS, Target, applicable, runtime_requirements, wheel_requirements

JP5, JP6 = TARGETS


def test_requirements_come_from_pyproject_without_nvidias_onnxruntime(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\ndependencies = ["numpy>=1.21", "newdep>=2"]\n'
        '[project.optional-dependencies]\nmic = ["sounddevice"]\nformats = ["av>=11"]\n'
        'discovery = ["zeroconf>=0.131"]\ncpu = ["onnxruntime>=1.16"]\n'
    )
    wanted = runtime_requirements(pyproject)
    assert wanted == ["numpy>=1.21", "newdep>=2", "sounddevice", "av>=11", "zeroconf>=0.131"]  # all covered
    assert applicable([*wanted, "onnxruntime>=1.16", "onnxruntime-gpu"], JP5) == wanted
    # the real file: the runtime's own dependencies are all there
    names = " ".join(runtime_requirements())
    for name in ("numpy", "tokenizers", "flask", "sounddevice", "wyoming", "zeroconf"):
        assert name in names


def test_markers_are_evaluated_for_the_jetson_not_this_machine():
    reqs = [
        "opencc>=1.1.6; platform_machine != 'aarch64' or python_version >= '3.10'",
        "opencc-purepy>=1.5; platform_machine == 'aarch64' and python_version < '3.10'",
        "pywin32; sys_platform == 'win32'",
        "uvloop[extra]>=0.19; sys_platform == 'linux'",
    ]
    assert applicable(reqs, JP5) == ["opencc-purepy>=1.5", "uvloop[extra]>=0.19"]
    assert applicable(reqs, JP6) == ["opencc>=1.1.6", "uvloop[extra]>=0.19"]


def test_every_manylinux_tag_up_to_jetpacks_glibc_is_offered():
    tags = Target("x", "3.8", "3.8.10", (2, 31)).platforms()
    assert tags[0] == "manylinux2014_aarch64"
    assert "manylinux_2_17_aarch64" in tags and "manylinux_2_28_aarch64" in tags
    assert tags[-1] == "manylinux_2_31_aarch64" and "manylinux_2_32_aarch64" not in tags
    assert JP6.platforms()[-1] == "manylinux_2_35_aarch64"


def _wheel(path: Path, requires: list) -> Path:
    lines = [
        "Metadata-Version: 2.1",
        "Name: flaskish",
        "Version: 1.0",
        *(f"Requires-Dist: {r}" for r in requires),
    ]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("flaskish-1.0.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_a_dependency_only_older_pythons_need_is_followed(tmp_path):
    wheel = _wheel(
        tmp_path / "flaskish-1.0-py3-none-any.whl",
        [
            "werkzeug>=3",
            "importlib-metadata>=3.6; python_version < '3.10'",
            "asyncio-thing; python_version >= '3.12'",
            "httpx; extra == 'client'",
        ],
    )
    assert wheel_requirements(wheel, JP5) == [
        "werkzeug>=3",
        "importlib-metadata>=3.6; python_version < '3.10'",
    ]
    assert wheel_requirements(wheel, JP6) == ["werkzeug>=3"]
    assert wheel_requirements(wheel, JP6, ["client"]) == ["werkzeug>=3", "httpx; extra == 'client'"]


def test_the_runtime_resolves_to_aarch64_wheels_for_both_jetpacks():
    results = jetson_wheels.check()
    if any(r.offline for r in results):
        pytest.skip(f"PyPI cannot be reached: {next(r.error for r in results if r.offline)}")
    report = jetson_wheels.report(results)
    assert all(r.ok for r in results), report
    for r in results:
        names = {jetson_wheels._wheel_name(w) for w in r.wheels}
        assert {"numpy", "tokenizers", "flask", "soundfile"} <= names, report
        assert not any("x86_64" in w for w in r.wheels), report
        compiled = [w for w in r.wheels if not w.endswith("-none-any.whl")]
        assert compiled and all("aarch64" in w for w in compiled), report
    jp5 = {jetson_wheels._wheel_name(w) for w in results[0].wheels}
    assert "opencc-purepy" in jp5 and "opencc" not in jp5  # no OpenCC wheel for Python 3.8 on aarch64
    assert "importlib-metadata" in jp5  # Flask needs it below Python 3.10: markers followed for the Jetson
