"""The bundles a server serves: one Transcriber per patient, from ``<models_dir>/<patient>/``.

Every bundle folder is checked when it appears or changes (manifest parsed and validated, files hashed
against it); a corrupt, half-copied or mis-named one is logged once and skipped while the others keep
serving. Checked bundles are *available*; their Transcribers load when first used, and are unloaded least
recently used first when the loaded ones' model files would exceed the device's ``model_memory_mb`` (a care
home's many patients on one device). At start, bundles are loaded in order until the budget is full, so a
home with one or a few patients never waits for a first load.

``reload()`` picks up new, changed and removed bundles and swaps the table of available bundles in one
assignment; a loaded bundle that changed is loaded again at once (a broken new version leaves the old one
serving). A request that already holds a Transcriber keeps using it, unloaded or replaced or not.

The caregiver's phrase board (``board.json`` beside the manifest, runtime/board.py) is not part of a bundle's
fingerprint: an edit of it alone is re-read (a small JSON file) and handed to the loaded Transcriber, which
keeps its sessions: no hashing, no reload of the model.
"""

from __future__ import annotations

import logging
import re
import shlex
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Set, Tuple

from resonance.errors import ResonanceError
from resonance.runtime.board import BOARD_FILE, Board, read_board
from resonance.runtime.bundle import (
    MANIFEST,
    BundleError,
    Manifest,
    adapter_as_models,
    adapter_found,
    bundles_in,
    describe_model,
    export_command,
    is_adapter,
    load_manifest,
    visible_subfolders,
)
from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.device_sessions import warn_on_precision

log = logging.getLogger(__name__)

# One path component made of letters (any script), digits, '_' and '-': no '/', no '.', no '..'.
PATIENT_ID = re.compile(r"\w[\w-]{0,63}")  # used with fullmatch: `$` would accept a trailing newline

# (file name, size, mtime_ns) of every file in a bundle folder but the phrase board, which has its own stamp
Fingerprint = Tuple[Tuple[str, int, int], ...]
BoardStamp = Optional[Tuple[int, int]]  # (size, mtime_ns) of board.json; None: the bundle has none
TranscriberFactory = Callable[[Path, DeviceConfig], Any]
# Between why a bundle is skipped and what to do, where both share one line (the log, the start banner).
HINT_SEPARATOR = " — what to do: "


class InvalidPatientId(ResonanceError):
    """A patient id that is not a plain folder name (HTTP 400)."""


class UnknownPatient(ResonanceError):
    """A well-formed patient id with no bundle available (HTTP 404)."""


def check_patient_id(patient: str) -> str:
    if not isinstance(patient, str) or not PATIENT_ID.fullmatch(patient):
        raise InvalidPatientId(
            f"invalid patient id {str(patient)[:80]!r}",
            "a patient id is the bundle's folder name: letters, digits, '_' and '-' only (at most 64)",
        )
    return patient


class SkipReason(NamedTuple):
    """Why a bundle folder is skipped, and what to do about it ("" when the error says nothing to do)."""

    why: str
    fix: str = ""

    @classmethod
    def of(cls, exc: BaseException) -> SkipReason:
        if isinstance(exc, ResonanceError):  # its hint kept apart: the doctor prints it on a line of its own
            return cls(_one_line(exc.message), _one_line(exc.hint))
        return cls(_one_line(str(exc)))

    def one_line(self) -> str:
        return f"{self.why}{HINT_SEPARATOR}{self.fix}" if self.fix else self.why


@dataclass(frozen=True)
class BundleEntry:
    """A checked bundle folder, loaded or not: what /patients lists and what a first request loads."""

    patient: str
    path: Path
    manifest: Manifest
    fingerprint: Fingerprint
    model_bytes: int  # its files' size: what loading it costs against model_memory_mb
    board: Board = field(
        default_factory=Board
    )  # the phrase board: recorded phrases with the caregiver's edits
    board_stamp: BoardStamp = None


@dataclass(frozen=True)
class LoadedBundle:
    patient: str
    path: Path
    transcriber: Any  # resonance.runtime.transcriber.Transcriber (imported lazily: it pulls in onnxruntime)
    fingerprint: Fingerprint
    model_bytes: int = 0
    board_stamp: BoardStamp = None  # the board its transcriber matches against

    @property
    def manifest(self) -> Any:
        return self.transcriber.manifest


@dataclass
class ReloadReport:
    added: List[str] = field(default_factory=list)
    updated: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)  # folder name -> why it was skipped
    boards: List[str] = field(default_factory=list)  # patients whose phrase board alone was re-read

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def default_transcriber_factory(bundle_dir: Path, config: DeviceConfig) -> Any:
    from resonance.runtime.transcriber import Transcriber

    # The registry hashed the files when it checked the folder (and re-checks if they changed since).
    return Transcriber.for_device(bundle_dir, config, verify=False, warn=False)  # the registry warns itself


def fingerprint(folder: Path) -> Fingerprint:
    """Cheap change detector (stat only): a re-export or a copy in progress changes a size or an mtime."""
    entries = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != BOARD_FILE:
            stat = path.stat()
            entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def board_stamp(folder: Path) -> BoardStamp:
    try:
        stat = (folder / BOARD_FILE).stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def require_models_dir(models_dir: Path) -> Path:
    """``models_dir`` if it is a folder, else the error: serve checks it before ports, certificate or token,
    so a mistyped path is the one error of a start, not the second after a port in use."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ResonanceError(
            f"models folder not found: {models_dir}",
            "pass the folder that holds one bundle per patient (made by `resonance export --out <dir>/<id>`)",
        )
    return models_dir


class ModelRegistry:
    """Every usable bundle under ``models_dir``, by patient id; thread-safe.

    ``patients`` and ``entries()`` are the available bundles; ``bundles()`` the loaded ones; ``get()`` loads on
    first use. ``memory_budget_mb`` defaults to the device config's ``model_memory_mb`` (0 = no limit).
    """

    def __init__(
        self,
        models_dir: Path,
        device_config: DeviceConfig,
        factory: TranscriberFactory = default_transcriber_factory,
        poll_interval_s: float = 0.0,
        memory_budget_mb: Optional[float] = None,
    ) -> None:
        self.models_dir = require_models_dir(models_dir)
        # `--models bundles/grandpa` (one bundle, not the folder of bundles) is a common slip: serve that one.
        self.single_bundle = (self.models_dir / MANIFEST).is_file()
        self.device_config = device_config
        budget = device_config.model_memory_mb if memory_budget_mb is None else memory_budget_mb
        self.memory_budget_bytes = int(budget * 1024 * 1024)  # 0: no limit
        self._factory = factory
        self._entries: Mapping[str, BundleEntry] = {}
        self._loaded: OrderedDict[str, LoadedBundle] = OrderedDict()  # least recently used first
        self._failed: Dict[str, Tuple[Fingerprint, SkipReason]] = {}  # skipped folder -> (fingerprint, why)
        self._ignored: Set[str] = set()  # folders that are not patient ids (warned about once)
        self._lock = threading.Lock()  # guards _loaded and _load_locks
        self._load_locks: Dict[str, threading.Lock] = {}  # one load at a time per patient
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: Optional[threading.Thread] = None
        self.reload()
        self.preload()
        if poll_interval_s > 0:
            self.start_polling(poll_interval_s)

    # -- lookups ------------------------------------------------------------------------------------------------

    @property
    def patients(self) -> List[str]:
        return sorted(self._entries)

    @property
    def failed(self) -> Dict[str, str]:
        """Skipped folder -> why, and what to do, on one line."""
        return {name: why.one_line() for name, (_, why) in self._failed.items()}

    @property
    def skip_reasons(self) -> Dict[str, SkipReason]:
        """Skipped folder -> why and what to do, apart."""
        return {name: why for name, (_, why) in self._failed.items()}

    def entries(self) -> List[BundleEntry]:
        table = self._entries
        return [table[p] for p in sorted(table)]

    def bundles(self) -> List[LoadedBundle]:
        """The bundles loaded now, by patient id."""
        with self._lock:
            return [self._loaded[p] for p in sorted(self._loaded)]

    @property
    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(b.model_bytes for b in self._loaded.values())

    def no_patient_error(self) -> ResonanceError:
        """Why this models folder gives a server no patient, saying what the folder is and what to pass."""
        folder = self.models_dir
        if is_adapter(folder):
            return adapter_as_models(folder)
        failed = self.failed
        if self.single_bundle:  # served alone when it loads: here it did not
            return ResonanceError(
                f"'{folder}' is one patient's bundle, and it cannot be served: {failed.get(folder.name, '?')}",
                f"fix that bundle, or pass the folder that holds the patients' bundles, e.g. --models "
                f"{folder.parent}",
            )
        # Every visible subfolder, not only those named like a patient ("my bundles", "bundles.v2" are skipped
        # as patients, so `failed` does not hold them).
        nested = [c.name for c in visible_subfolders(folder) if bundles_in(c)]
        if nested:  # e.g. --models runs/demo (which holds bundles/demo)
            return ResonanceError(
                f"no bundle in '{folder}' itself: its folder '{nested[0]}' holds the bundles",
                f"pass --models {shlex.quote(str(folder / nested[0]))}",
            )
        problems = "; ".join(f"{k}: {v}" for k, v in failed.items()) or "it has no bundle folders"
        return ResonanceError(
            f"no usable bundle in {folder} ({problems})",
            "export one with `resonance export --out <models>/<patient>` and copy the whole folder here",
        )

    def get(self, patient: Optional[str] = None) -> LoadedBundle:
        """The bundle of ``patient``, loaded if it is not; with no id, the only one (an error when several)."""
        table = self._entries  # one read: a concurrent reload cannot change what this request sees
        if not patient:
            if len(table) == 1:
                return self._loaded_bundle(next(iter(table.values())))
            if not table:
                raise UnknownPatient(
                    "no model is loaded on this server", "copy a bundle into the models folder"
                )
            raise InvalidPatientId(
                f"this server has {len(table)} patients; the request must say which",
                "send the form field 'patient' (OpenAI API: 'model') with the patient id",
            )
        check_patient_id(patient)
        entry = table.get(patient)
        if entry is None:
            raise UnknownPatient(
                f"no model for patient '{patient}'", "GET /patients lists the ids this server has"
            )
        return self._loaded_bundle(entry)

    # -- loading and unloading ----------------------------------------------------------------------------------

    def preload(self) -> List[str]:
        """Load available bundles in id order while they fit the memory budget; returns those loaded."""
        loaded = []
        for entry in self.entries():
            over = (
                self.memory_budget_bytes and self.loaded_bytes + entry.model_bytes > self.memory_budget_bytes
            )
            if over and self.bundles():  # the first one loads even when it alone is over the budget
                break
            try:
                self._loaded_bundle(entry)
            except BundleError:
                continue  # logged and now listed as failed
            loaded.append(entry.patient)
        return loaded

    def _loaded_bundle(self, entry: BundleEntry) -> LoadedBundle:
        with self._lock:
            current = self._loaded.get(entry.patient)
            if current is not None and current.fingerprint == entry.fingerprint:
                self._loaded.move_to_end(entry.patient)
                return self._with_board(current, entry)
            load_lock = self._load_locks.setdefault(entry.patient, threading.Lock())
        with load_lock:  # a second request for the same patient waits for this load instead of repeating it
            with self._lock:
                current = self._loaded.get(entry.patient)
                if current is not None and current.fingerprint == entry.fingerprint:
                    self._loaded.move_to_end(entry.patient)
                    return self._with_board(current, entry)
            bundle = self._load(entry)
            with self._lock:
                self._make_room(bundle.model_bytes, keep=entry.patient)
                self._loaded[entry.patient] = bundle
                self._loaded.move_to_end(entry.patient)
            return bundle

    def _load(self, entry: BundleEntry) -> LoadedBundle:
        """A Transcriber for ``entry``; BundleError (logged, and the bundle listed as failed) when it fails."""
        try:
            if fingerprint(entry.path) != entry.fingerprint:  # changed since it was checked: check it again
                raise BundleError(
                    f"bundle '{entry.patient}' changed on disk while it was in use",
                    "wait for the copy to finish; the next reload checks it again",
                )
            transcriber = self._factory(entry.path, self.device_config)
        except Exception as exc:  # onnxruntime refusing a graph, a file gone ...: this bundle only
            reason = SkipReason.of(exc)
            why = reason.one_line()
            with self._reload_lock:  # no longer available, until its folder changes
                self._failed[entry.patient] = (entry.fingerprint, reason)
                self._entries = {k: v for k, v in self._entries.items() if k != entry.patient}
            trace = not isinstance(exc, (ResonanceError, OSError))
            log.error("bundle '%s' not loaded (skipped): %s", entry.patient, why, exc_info=trace)
            raise BundleError(
                f"the model of patient '{entry.patient}' could not be loaded: {why}",
                "copy the bundle again from the export machine",
            ) from exc
        warn_on_precision(entry.patient, entry.manifest, self.device_config)
        log.info(
            "loaded bundle '%s' (%s, %s) on %s",
            entry.patient,
            describe_model(entry.manifest),
            entry.manifest.precision,
            ", ".join(getattr(transcriber, "providers", ()) or ()),
        )
        return _with_entry_board(
            LoadedBundle(entry.patient, entry.path, transcriber, entry.fingerprint, entry.model_bytes), entry
        )

    def _with_board(self, bundle: LoadedBundle, entry: BundleEntry) -> LoadedBundle:
        """``bundle`` with ``entry``'s board, kept for the next request (lock held): the board changed alone."""
        if bundle.board_stamp == entry.board_stamp:
            return bundle
        bundle = _with_entry_board(bundle, entry)
        self._loaded[entry.patient] = bundle
        return bundle

    def _make_room(self, needed: int, keep: str) -> None:
        """Unload the least recently used bundles until ``needed`` more bytes fit the budget (lock held)."""
        if not self.memory_budget_bytes:
            return
        used = sum(b.model_bytes for p, b in self._loaded.items() if p != keep)
        for patient in [p for p in self._loaded if p != keep]:
            if used + needed <= self.memory_budget_bytes:
                break
            unloaded = self._loaded.pop(patient)
            used -= unloaded.model_bytes
            log.info(
                "unloaded bundle '%s' (least recently used; model memory budget %d MB)",
                patient,
                self.memory_budget_bytes // (1024 * 1024),
            )

    # -- reloading ------------------------------------------------------------------------------------------

    def reload(self) -> ReloadReport:
        """Check new and changed bundles, drop removed ones, load again the loaded ones that changed; a broken
        new version leaves the old one serving."""
        with self._reload_lock:
            report = ReloadReport()
            old = self._entries
            new: Dict[str, BundleEntry] = {}
            seen = set()
            for folder in self._bundle_folders():
                name = folder.name
                seen.add(name)
                try:
                    stamp = fingerprint(folder)
                except OSError as exc:  # removed or unreadable between listing and stat
                    report.failed[name] = str(exc)
                    continue
                current = old.get(name)
                if current is not None and current.fingerprint == stamp:
                    new[name] = self._with_current_board(current, report)
                    continue
                if name in self._failed and self._failed[name][0] == stamp:
                    if current is not None:
                        new[name] = current
                    continue  # unchanged since it failed: don't re-hash it every poll
                try:
                    entry = self._check(folder, stamp)
                    if current is not None and self._is_loaded(name):
                        self._replace_loaded(entry)  # in use: the new version is loaded now
                except Exception as exc:  # one broken bundle must not stop the others; logged, never hidden
                    reason = SkipReason.of(exc)
                    why = reason.one_line()
                    self._failed[name] = (stamp, reason)
                    report.failed[name] = why
                    verb = "keeping the version already loaded" if current is not None else "skipped"
                    # An unexpected type (e.g. onnxruntime refusing a graph) keeps its traceback in the log.
                    trace = not isinstance(exc, (ResonanceError, OSError))
                    log.error("bundle '%s' not loaded (%s): %s", name, verb, why, exc_info=trace)
                    if current is not None:
                        new[name] = current
                    continue
                self._failed.pop(name, None)
                new[name] = entry
                (report.updated if current is not None else report.added).append(name)
            report.removed = sorted(set(old) - set(new))
            for name in list(self._failed):
                if name not in seen:
                    del self._failed[name]
            self._entries = new  # the atomic swap: one reference assignment
            with self._lock:
                for name in report.removed:
                    self._loaded.pop(name, None)
            if report.changed:
                log.info(
                    "models: %d available (added %s, updated %s, removed %s)",
                    len(new),
                    report.added,
                    report.updated,
                    report.removed,
                )
            return report

    def _is_loaded(self, patient: str) -> bool:
        with self._lock:
            return patient in self._loaded

    def _replace_loaded(self, entry: BundleEntry) -> None:
        transcriber = self._factory(entry.path, self.device_config)
        warn_on_precision(entry.patient, entry.manifest, self.device_config)
        log.info("loaded bundle '%s' again (it changed on disk)", entry.patient)
        bundle = LoadedBundle(entry.patient, entry.path, transcriber, entry.fingerprint, entry.model_bytes)
        with self._lock:
            self._loaded[entry.patient] = _with_entry_board(bundle, entry)

    def _bundle_folders(self) -> List[Path]:
        if self.single_bundle:
            return [self.models_dir]
        folders = []
        ignored = set()
        for path in sorted(self.models_dir.iterdir()):
            # '.name.tmp-…' folders are exports in progress (fsutil.atomic_directory); skip them silently.
            if not path.is_dir() or path.name.startswith("."):
                continue
            if not PATIENT_ID.fullmatch(path.name):
                ignored.add(path.name)
                if path.name not in self._ignored:  # once, not at every reload poll
                    log.warning(
                        "ignoring folder '%s' in %s: not a valid patient id", path.name, self.models_dir
                    )
                continue
            folders.append(path)
        self._ignored = ignored
        return folders

    def _check(self, folder: Path, stamp: Fingerprint) -> BundleEntry:
        """The folder as a BundleEntry: a valid manifest of this patient, every file present and hashed."""
        if not (folder / MANIFEST).is_file():
            if is_adapter(folder):  # copied here instead of the bundle exported from it
                # Export refuses to write onto its own adapter, so the adapter has to leave the folder first.
                moved = Path("adapters") / folder.name
                raise BundleError(
                    adapter_found(Path(folder.name), "a bundle"),
                    f"move it out of {self.models_dir} (e.g. to {moved}), then export it here: "
                    f"{export_command(moved, str(self.models_dir / folder.name))}",
                )
            raise BundleError(
                f"no {MANIFEST} in '{folder}'", "copy the whole bundle folder made by `resonance export`"
            )
        manifest = load_manifest(folder, verify=False)  # the cheap checks first: no hashing a wrong folder
        if manifest.patient != folder.name:
            raise _another_patients_bundle(folder, manifest.patient)
        load_manifest(folder, verify=True)
        size = sum(int(entry.get("bytes", 0)) for entry in manifest.files.values())
        board_now = board_stamp(folder)  # before reading it: an edit made meanwhile is seen at the next poll
        try:
            board = read_board(folder, manifest)
        except ResonanceError as exc:  # a hand-edited board.json gone wrong must not stop recognition
            log.error("phrase board of '%s' unreadable, matching its recorded phrases: %s", folder.name, exc)
            board = Board(tuple(manifest.phrases or ()))
        return BundleEntry(folder.name, folder, manifest, stamp, size, board, board_now)

    def _with_current_board(self, entry: BundleEntry, report: ReloadReport) -> BundleEntry:
        """``entry``, or a copy with its board re-read when only board.json changed (cheap: no hashing)."""
        try:
            board_now = board_stamp(entry.path)
        except OSError as exc:
            report.failed[entry.patient] = str(exc)
            return entry
        if board_now == entry.board_stamp:
            return entry
        try:
            board = read_board(entry.path, entry.manifest)
        except ResonanceError as exc:  # a hand-edited board.json gone wrong: keep serving the last good board
            log.error("phrase board of '%s' not reloaded (keeping the previous one): %s", entry.patient, exc)
            return replace(entry, board_stamp=board_now)
        log.info("phrase board of '%s' reloaded: %d phrases", entry.patient, len(board))
        report.boards.append(entry.patient)
        return replace(entry, board=board, board_stamp=board_now)

    # -- background polling -----------------------------------------------------------------------------------

    def start_polling(self, interval_s: float) -> None:
        if self._poller is not None:
            return
        self._stop.clear()
        self._poller = threading.Thread(
            target=self._poll, args=(interval_s,), name="bundle-poller", daemon=True
        )
        self._poller.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.reload()
            except (
                Exception
            ):  # the poller must outlive a surprise (e.g. the folder unmounted); log with traceback
                log.exception("reloading bundles from %s failed; will retry", self.models_dir)


def _another_patients_bundle(folder: Path, patient: str) -> BundleError:
    """A bundle folder whose manifest names another patient: renamed, or copied for a new patient."""
    if not (folder.parent / patient).is_dir():
        return BundleError(
            f"bundle folder '{folder.name}' holds the model of patient '{patient}'",
            f"rename the folder to '{patient}' (the folder name is the patient id clients send)",
        )
    # `cp -r bundles/demo bundles/grandma`: renaming the copy would clash, and the model heard only 'demo'.
    # The copy is moved away by the user, never replaced by a hint's --force (it may be their only one).
    export = export_command(Path("adapters") / folder.name, str(folder))
    return BundleError(
        f"bundle folder '{folder.name}' is a copy of the bundle of patient '{patient}' (its manifest names "
        f"'{patient}', whose own folder is beside it): a model is trained for one patient",
        f"move the copy out of {folder.parent}, then export this patient's own from the adapter "
        f"`resonance train` made of {folder.name}'s recordings: {export}",
    )


def _with_entry_board(bundle: LoadedBundle, entry: BundleEntry) -> LoadedBundle:
    """``bundle`` whose transcriber matches ``entry``'s board (sharing its sessions)."""
    with_board = getattr(bundle.transcriber, "with_board", None)  # test doubles may have no board
    if with_board is None or bundle.transcriber.board == entry.board:
        return replace(bundle, board_stamp=entry.board_stamp)
    return replace(bundle, transcriber=with_board(entry.board), board_stamp=entry.board_stamp)


def _one_line(text: str) -> str:
    return " ".join(text.split())
