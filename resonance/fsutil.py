"""Write outputs so that a crash never leaves a half-written file or folder, and never clobbers user data."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from resonance.errors import ResonanceError


def write_bytes_atomic(path: Path, data: bytes, mode: Optional[int] = None) -> None:
    """Write via a temp file + rename. ``mode`` None: an ordinary file (0666 less the umask); 0o600 for
    private data, which then is never readable by others, not even while being written (mkstemp is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def cache_root() -> Path:
    """Where downloaded and generated models are kept: $RESONANCE_CACHE, else ~/.cache/resonance."""
    return Path(os.environ.get("RESONANCE_CACHE") or Path.home() / ".cache" / "resonance")


def refuse_to_overwrite(path: Path, force: bool, what: str) -> None:
    """Stop before touching an existing non-empty output unless the user said --force."""
    path = Path(path)
    if path.exists() and (path.is_file() or any(path.iterdir())) and not force:
        raise ResonanceError(
            f"{what} '{path}' already exists; refusing to overwrite it.",
            "choose another output path, or pass --force to replace it",
        )


@contextlib.contextmanager
def atomic_directory(final: Path, force: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename.

    If the body raises, the temporary directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    refuse_to_overwrite(final, force, what)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should be an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
