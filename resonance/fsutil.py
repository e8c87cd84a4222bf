"""Write outputs so that a crash never leaves a half-written file or folder, and never clobbers user data.

The rules every command that writes follows (issue #12):
- a file or folder appears complete or not at all: it is written under a temporary name beside its final
  place and renamed into place (``atomic_file``, ``write_bytes_atomic``, ``atomic_directory``);
- an output never overlaps an input (``refuse_overlap``): not the same folder, not a parent, not a child,
  symlinks followed, so replacing the output can never delete what the command reads;
- ``--force`` replaces only what the command itself made, recognised by a file only it writes
  (``refuse_to_overwrite(..., own=...)``: an adapter's train_config.json, a bundle's manifest.json …);
- the temporary names carry the host and process that made them, so the next run removes the ones a killed
  run left behind, and only those (``clean_stale_temporaries``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from resonance.errors import ResonanceError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
# "<name>.tmp-<host>-<pid>-<random>": a temporary file or folder of this process, beside its final place.
_TEMP_TAG = ".tmp-"
_OLD_TAG = ".old-"  # a replaced output, kept for the moment between two renames


def _host_tag() -> str:
    """This machine's name, letters and digits only: two machines (or containers) writing to one shared
    folder must not take each other's temporary folders for abandoned ones."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def _own_prefix(name: str, tag: str = _TEMP_TAG) -> str:
    return f".{name}{tag}{_host_tag()}-{os.getpid()}-"


# --- files -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: Optional[int] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is synced and renamed onto ``path``.

    For writers that want a file name (``torch.save``, ``savefig(..., format=...)``): the temporary name has
    no extension, so name the format explicitly. ``mode`` as in :func:`write_bytes_atomic`.
    If the body raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=_own_prefix(path.name), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


def write_bytes_atomic(path: PathLike, data: bytes, mode: Optional[int] = None) -> None:
    """Write via a temp file + rename. ``mode`` None: an ordinary file (0666 less the umask); 0o600 for
    private data, which then is never readable by others, not even while being written (mkstemp is 0600)."""
    with atomic_file(path, mode) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def write_bytes_new(path: PathLike, data: bytes, mode: Optional[int] = None) -> None:
    """Like :func:`write_bytes_atomic`, but never replaces an existing file: FileExistsError instead.

    The complete temp file is hard-linked to its final name (link() fails when the name exists, atomically, so
    two writers racing for one name cannot clobber each other), then the temp name is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_own_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:  # no hard links (a FAT/exFAT USB drive): check, then rename (callers hold a lock)
            if path.exists():
                raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _sync_folder(path.parent)


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def cache_root() -> Path:
    """Where downloaded and generated models are kept: $RESONANCE_CACHE, else ~/.cache/resonance."""
    return Path(os.environ.get("RESONANCE_CACHE") or Path.home() / ".cache" / "resonance")


def read_json_file(path: PathLike, what: str, hint: str) -> Any:
    """The JSON value in ``path``, or one ResonanceError saying what is wrong with the file and ``hint``.

    Every way a file can be unreadable is the user's to fix, not a traceback: missing, unreadable, not UTF-8
    (a byte-order mark is accepted: Windows Notepad writes one), not JSON, or nested so deeply (``[`` x 100000)
    that the parser runs out of stack.
    """
    path = Path(path)
    if not path.is_file():
        raise ResonanceError(f"{what} {path} not found", hint)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ResonanceError(
            f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
            f"save it as UTF-8; {hint}",
        ) from exc
    except OSError as exc:
        raise ResonanceError(f"cannot read {what} {path}: {exc.strerror or exc}", hint) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResonanceError(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", hint
        ) from exc
    except RecursionError as exc:
        raise ResonanceError(f"{what} {path} is nested too deeply to be read", hint) from exc


# --- outputs next to inputs --------------------------------------------------------------------------------


def refuse_overlap(output: PathLike, what: str, inputs: Iterable[Tuple[str, Optional[PathLike]]]) -> None:
    """Refuse an output that is an input, lies inside one, or holds one, before anything is written.

    ``inputs``: (name, path) pairs, e.g. ``[("data folder", config.data)]``; None paths are skipped.
    Symlinks are followed and, for existing paths, files are compared by identity (device + inode), so
    neither a link nor a case-insensitive file system hides an overlap. Replacing (``--force``) or writing
    into such an output would delete or change what the command reads: a patient's recordings, an adapter.
    """
    out = Path(output)
    for name, source in inputs:
        if source is None or str(source) == "":
            continue
        source = Path(source)
        if _same(out, source):
            relation = f"is the {name}"
        elif _inside(out, source):
            relation = f"is inside the {name} '{source}'"
        elif _inside(source, out):
            relation = f"holds the {name} '{source}'"
        else:
            continue
        raise ResonanceError(
            f"the {what} '{out}' {relation}: writing it could delete or change the {name}",
            f"choose {_a(what)} apart from the {name}, e.g. a new folder next to it (nothing was changed)",
        )


def _same(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return _real(a) == _real(b)


def _inside(child: Path, parent: Path) -> bool:
    """``child`` is strictly inside ``parent`` (after following symlinks)."""
    real_child, real_parent = _real(child), _real(parent)
    if real_parent in real_child.parents:
        return True
    if not parent.exists():
        return False
    # Identity, for a file system that ignores case (macOS, Windows) or a folder reached by two mounts.
    for ancestor in real_child.parents:
        with contextlib.suppress(OSError):
            if ancestor.exists() and os.path.samefile(ancestor, parent):
                return True
    return False


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


# --- replacing an output -----------------------------------------------------------------------------------


def refuse_to_overwrite(
    path: PathLike, force: bool, what: str, own: Sequence[str] = (), force_flag: Optional[str] = "--force"
) -> None:
    """Stop before touching an existing output unless the user said --force, and even then unless it is ours.

    ``own``: file names of which at least one marks a folder as this command's earlier output (an adapter's
    train_config.json, a bundle's manifest.json). With ``own`` given, ``--force`` replaces only such a
    folder, never an arbitrary folder of the user's (their recordings, a project) nor a file.
    ``force_flag``: the option the hint may offer (None: the command has none, e.g. `update`, which never
    replaces an adapter).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not any(path.iterdir()):
        return  # an empty folder: nothing to lose
    not_ours = _not_ours(path, what, own)
    if not force:
        # Offer --force only where it would work: it never replaces what is not ours.
        offer = (
            " (nothing was changed)"
            if not_ours or not force_flag
            else f", or pass {force_flag} to replace it"
        )
        raise ResonanceError(
            f"'{path}' already exists and {not_ours}; refusing to overwrite it."
            if not_ours
            else f"{what} '{path}' already exists; refusing to overwrite it.",
            f"choose another output path{offer}",
        )
    if not_ours:
        # The user's own folder: they may move it aside themselves if they really mean to replace it.
        a_folder = path.is_dir() and not path.is_symlink()
        raise ResonanceError(
            f"'{path}' {not_ours}; only such a folder is ever replaced (--force included), never another",
            "choose another output path; if you really want to replace that folder, move or delete it "
            "yourself first (nothing was changed)"
            if a_folder
            else "choose another output path (nothing was changed)",
        )


def _not_ours(path: Path, what: str, own: Sequence[str]) -> str:
    """Why ``path`` is not this command's earlier output ("" when it is, or when ``own`` names nothing)."""
    if not own:
        return ""
    if path.is_symlink() or not path.is_dir():
        return f"is a {'link' if path.is_symlink() else 'file'}, not {_a(what)} made by resonance"
    if not any((path / marker).is_file() for marker in own):
        return f"is not {_a(what)} made by resonance (it has no {' or '.join(own)})"
    return ""


@contextlib.contextmanager
def file_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs: one process at a time,
    the others wait. Without fcntl (not Linux or macOS) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_directory(
    final: PathLike, force: bool = False, what: str = "output", own: Sequence[str] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename.

    If the body raises, the temporary directory is removed and ``final`` is untouched. An existing ``final``
    is replaced only under the rules of :func:`refuse_to_overwrite` (``force``, ``own``).
    """
    final = Path(final)
    refuse_to_overwrite(final, force, what, own)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=_own_prefix(final.name), dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should be an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(_own_prefix(final.name, _OLD_TAG).rstrip("-"))
        os.replace(final, old)
    os.replace(tmp, final)
    _sync_folder(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def scratch_directory(beside: PathLike, purpose: str) -> Iterator[Path]:
    """A temporary folder next to ``beside`` for ``purpose`` (e.g. a download), removed on exit.

    Beside the output, not in /tmp (often a small RAM disk), and named like this module's temporaries
    (``.<name>-<purpose>.tmp-<host>-<pid>-…``), so the next run removes it if this one is killed.
    """
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries_in(beside.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_own_prefix(f"{beside.name}-{purpose}"), dir=beside.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- what a killed run leaves behind -----------------------------------------------------------------------


def clean_stale_temporaries(final: PathLike) -> List[Path]:
    """Remove the temporary files/folders killed runs left beside ``final``; returns what was removed.

    Only names this module makes (``.<name>.tmp-<host>-<pid>-…``, ``.<name>.old-<host>-<pid>``) whose
    process is gone on this host are touched, for any output in ``final``'s folder (bundles/ may hold a killed
    export of another patient). A replaced output whose replacement never arrived (killed between the two
    renames) is put back, not removed. ``final``'s own temporaries of a running process, of another host, or
    from before names carried their owner are named in a warning, and kept.
    """
    final = Path(final)
    return _clean(final.parent, warn_for=final.name)


def clean_stale_temporaries_in(folder: PathLike) -> List[Path]:
    """:func:`clean_stale_temporaries` for a folder (e.g. the takes a killed recording session left)."""
    return _clean(Path(folder), warn_for=None)


_TEMPORARY = re.compile(
    r"\.(?P<name>.+?)(?P<tag>\.tmp-|\.old-)(?:(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)(?:-[^-]*)?$)?"
)


def _clean(folder: Path, warn_for: Optional[str]) -> List[Path]:
    removed: List[Path] = []
    try:
        entries = [
            e
            for e in os.scandir(folder)
            if e.name.startswith(".") and (_TEMP_TAG in e.name or _OLD_TAG in e.name)
        ]
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match:
            continue
        path, final = Path(entry.path), folder / match.group("name")
        pid = match.group("pid")
        if pid is None or match.group("host") != _host_tag() or _process_alive(int(pid)):
            if match.group("name") == warn_for:
                log.warning(
                    "%s looks like the temporary %s of an interrupted or running resonance command; "
                    "delete it if no command is writing %s",
                    path,
                    "folder" if entry.is_dir(follow_symlinks=False) else "file",
                    final,
                )
            continue
        if match.group("tag") == _OLD_TAG and not final.exists() and not final.is_symlink():
            os.replace(path, final)
            log.warning("restored %s from %s (a run was killed while replacing it)", final, path.name)
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        log.info("removed %s, left by a killed run (process %s is gone)", path, pid)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it on Windows: assume alive, only name it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); best effort where folders cannot be opened (Windows)."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths on one filesystem in one step (Linux renameat2 RENAME_EXCHANGE): every reader sees either
    the old or the new content at each path, never nothing. Returns False, having done nothing, where the
    system cannot (another OS, an old kernel or C library, a filesystem without it): the caller falls back."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc >= 2.28 (JetPack 5's Ubuntu 20.04 has 2.31)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
