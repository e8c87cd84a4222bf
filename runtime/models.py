"""The bundles a server serves: one Transcriber per patient, loaded from ``<models_dir>/<patient>/``.

A corrupt or half-copied bundle is logged and skipped while the others keep serving. ``reload()`` picks up
new, changed and removed bundles and swaps the whole table in one assignment: a request that already holds
a Transcriber keeps using it, the next request gets the new one.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from resonance.errors import ResonanceError
from resonance.runtime.bundle import MANIFEST, BundleError, load_manifest
from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.device_sessions import warn_on_precision

log = logging.getLogger(__name__)

# One path component made of letters (any script), digits, '_' and '-': no '/', no '.', no '..'.
PATIENT_ID = re.compile(r"\w[\w-]{0,63}")  # used with fullmatch: `$` would accept a trailing newline

Fingerprint = Tuple[Tuple[str, int, int], ...]  # (file name, size, mtime_ns) of every file in a bundle folder
TranscriberFactory = Callable[[Path, DeviceConfig], Any]


class InvalidPatientId(ResonanceError):
    """A patient id that is not a plain folder name (HTTP 400)."""


class UnknownPatient(ResonanceError):
    """A well-formed patient id with no bundle loaded (HTTP 404)."""


def check_patient_id(patient: str) -> str:
    if not isinstance(patient, str) or not PATIENT_ID.fullmatch(patient):
        raise InvalidPatientId(
            f"invalid patient id {str(patient)[:80]!r}",
            "a patient id is the bundle's folder name: letters, digits, '_' and '-' only (at most 64)",
        )
    return patient


@dataclass(frozen=True)
class LoadedBundle:
    patient: str
    path: Path
    transcriber: Any  # resonance.runtime.transcriber.Transcriber (imported lazily: it pulls in onnxruntime)
    fingerprint: Fingerprint

    @property
    def manifest(self) -> Any:
        return self.transcriber.manifest


@dataclass
class ReloadReport:
    added: List[str] = field(default_factory=list)
    updated: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)  # folder name -> why it was skipped

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def default_transcriber_factory(bundle_dir: Path, config: DeviceConfig) -> Any:
    from resonance.runtime.transcriber import Transcriber

    return Transcriber.for_device(bundle_dir, config, verify=True, warn=False)  # the registry warns itself


def fingerprint(folder: Path) -> Fingerprint:
    """Cheap change detector (stat only): a re-export or a copy in progress changes a size or an mtime."""
    entries = []
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


class ModelRegistry:
    """Every bundle under ``models_dir``, by patient id. Thread-safe; ``reload()`` swaps atomically."""

    def __init__(
        self,
        models_dir: Path,
        device_config: DeviceConfig,
        factory: TranscriberFactory = default_transcriber_factory,
        poll_interval_s: float = 0.0,
    ) -> None:
        self.models_dir = Path(models_dir)
        if not self.models_dir.is_dir():
            raise ResonanceError(
                f"models folder not found: {self.models_dir}",
                "pass the folder that holds one bundle per patient (made by `resonance export --out <dir>/<id>`)",
            )
        self.device_config = device_config
        self._factory = factory
        self._bundles: Mapping[str, LoadedBundle] = {}
        self._failed: Dict[str, Tuple[Fingerprint, str]] = {}  # skipped folder -> (its fingerprint, why)
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: Optional[threading.Thread] = None
        self.reload()
        if poll_interval_s > 0:
            self.start_polling(poll_interval_s)

    # -- lookups (no lock: they read one reference to an immutable-by-convention dict) -------------------

    @property
    def patients(self) -> List[str]:
        return sorted(self._bundles)

    @property
    def failed(self) -> Dict[str, str]:
        return {name: why for name, (_, why) in self._failed.items()}

    def bundles(self) -> List[LoadedBundle]:
        table = self._bundles
        return [table[p] for p in sorted(table)]

    def get(self, patient: Optional[str] = None) -> LoadedBundle:
        """The bundle of ``patient``; with no id, the only one (an error when several are loaded)."""
        table = self._bundles  # one read: a concurrent reload cannot change what this request sees
        if not patient:
            if len(table) == 1:
                return next(iter(table.values()))
            if not table:
                raise UnknownPatient(
                    "no model is loaded on this server", "copy a bundle into the models folder"
                )
            raise InvalidPatientId(
                f"this server has {len(table)} patients; the request must say which",
                "send the form field 'patient' (OpenAI API: 'model') with the patient id",
            )
        check_patient_id(patient)
        bundle = table.get(patient)
        if bundle is None:
            raise UnknownPatient(
                f"no model for patient '{patient}'", "GET /patients lists the ids this server has"
            )
        return bundle

    # -- reloading ------------------------------------------------------------------------------------------

    def reload(self) -> ReloadReport:
        """Load new and changed bundles, drop removed ones; a broken new version leaves the old one serving."""
        with self._reload_lock:
            report = ReloadReport()
            old = self._bundles
            new: Dict[str, LoadedBundle] = {}
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
                    new[name] = current
                    continue
                if name in self._failed and self._failed[name][0] == stamp:
                    if current is not None:
                        new[name] = current
                    continue  # unchanged since it failed: don't re-hash it every poll
                try:
                    new[name] = self._load(folder, stamp)
                except Exception as exc:  # one broken bundle must not stop the others; logged, never hidden
                    self._failed[name] = (stamp, _one_line(exc))
                    report.failed[name] = _one_line(exc)
                    verb = "keeping the version already loaded" if current is not None else "skipped"
                    # An unexpected type (e.g. onnxruntime refusing a graph) keeps its traceback in the log.
                    trace = not isinstance(exc, (ResonanceError, OSError))
                    log.error("bundle '%s' not loaded (%s): %s", name, verb, _one_line(exc), exc_info=trace)
                    if current is not None:
                        new[name] = current
                    continue
                self._failed.pop(name, None)
                (report.updated if current is not None else report.added).append(name)
            report.removed = sorted(set(old) - set(new))
            for name in list(self._failed):
                if name not in seen:
                    del self._failed[name]
            self._bundles = new  # the atomic swap: one reference assignment
            if report.changed:
                log.info(
                    "models: %d loaded (added %s, updated %s, removed %s)",
                    len(new),
                    report.added,
                    report.updated,
                    report.removed,
                )
            return report

    def _bundle_folders(self) -> List[Path]:
        folders = []
        for path in sorted(self.models_dir.iterdir()):
            # '.name.tmp-…' folders are exports in progress (fsutil.atomic_directory); skip them silently.
            if not path.is_dir() or path.name.startswith("."):
                continue
            if not PATIENT_ID.fullmatch(path.name):
                log.warning("ignoring folder '%s' in %s: not a valid patient id", path.name, self.models_dir)
                continue
            folders.append(path)
        return folders

    def _load(self, folder: Path, stamp: Fingerprint) -> LoadedBundle:
        if not (folder / MANIFEST).is_file():
            raise BundleError(
                f"no {MANIFEST} in '{folder}'", "copy the whole bundle folder made by `resonance export`"
            )
        # A cheap check first (no hashing); the Transcriber verifies the files' sha256.
        manifest = load_manifest(folder, verify=False)
        if manifest.patient != folder.name:
            raise BundleError(
                f"bundle folder '{folder.name}' holds the model of patient '{manifest.patient}'",
                f"rename the folder to '{manifest.patient}' (the folder name is the patient id clients send)",
            )
        transcriber = self._factory(folder, self.device_config)
        warn_on_precision(folder.name, manifest, self.device_config)
        log.info(
            "loaded bundle '%s' (%s, %s) on %s",
            folder.name,
            manifest.base_model,
            manifest.precision,
            ", ".join(getattr(transcriber, "providers", ()) or ()),
        )
        return LoadedBundle(folder.name, folder, transcriber, stamp)

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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
