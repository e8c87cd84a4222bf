"""A patient's served bundle and the bundles it replaced: deploy a new one atomically, roll back to an earlier one.

    <models>/<patient>/                               the bundle `resonance serve` loads
    <models>/.history/<patient>/<UTC time>-<kind>/    earlier bundles; Resonance never deletes them:
        replaced       served until `resonance update` deployed a better one
        rolled-back    served until `resonance rollback` put another one back
        not-deployed   a candidate `resonance update` judged worse than the served bundle (kept to look at,
                       or to deploy anyway with `rollback --to`)

The served folder changes in one rename exchange (fsutil.exchange_paths): a running server's hot reload sees
the old bundle or the new one at that path, never neither, and requests in flight finish on the old one. The
caregiver's phrase-board edits belong to the patient, not to one model, so they move to the deployed bundle
(runtime/board.py). Folders starting with "." are not patients to the server, so the history is not served.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from resonance.errors import ResonanceError
from resonance.fsutil import exchange_paths, file_lock
from resonance.runtime.board import carry_board
from resonance.runtime.bundle import BundleError, Manifest, load_manifest

log = logging.getLogger(__name__)

HISTORY = ".history"
REPLACED = "replaced"
ROLLED_BACK = "rolled-back"
NOT_DEPLOYED = "not-deployed"
KINDS = (REPLACED, ROLLED_BACK, NOT_DEPLOYED)


@dataclass(frozen=True)
class Version:
    """One bundle in a patient's history."""

    path: Path
    name: str  # the folder name: <UTC time>-<kind>
    kind: str  # REPLACED, ROLLED_BACK or NOT_DEPLOYED
    manifest: Optional[Manifest]  # None: the folder is not a readable bundle (shown, never deployed)

    def describe(self) -> str:
        if self.manifest is None:
            return f"{self.name}  (not a readable bundle)"
        cer = (self.manifest.metrics or {}).get("cer_after")
        made = f", CER {cer:.3f} in training" if isinstance(cer, (int, float)) else ""
        return f"{self.name}  exported {self.manifest.created}{made}"


def history_dir(served: Path) -> Path:
    return Path(served).parent / HISTORY / Path(served).name


def versions(served: Path) -> List[Version]:
    """The patient's earlier bundles, newest first."""
    folder = history_dir(served)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: _order(p.name), reverse=True):
        kind = next((k for k in KINDS if path.name.endswith("-" + k)), None)
        if not path.is_dir() or kind is None:
            continue
        try:
            manifest: Optional[Manifest] = load_manifest(path, verify=False)
        except BundleError:
            manifest = None
        found.append(Version(path, path.name, kind, manifest))
    return found


def keep(served: Path, bundle: Path, kind: str) -> Path:
    """Move ``bundle`` (on the models folder's filesystem) into the patient's history as ``kind``."""
    folder = history_dir(served)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # More than one in a second, of any kind: numbered after every one there (<stamp>.2, .3 …), so that the
    # history orders bundles as they left service (what a plain rollback goes by), never over an earlier one.
    same_second = [_order(p.name)[1] for p in folder.iterdir() if _order(p.name)[0] == stamp]
    n = max(same_second, default=0) + 1
    target = folder / f"{stamp if n == 1 else f'{stamp}.{n}'}-{kind}"
    os.rename(bundle, target)
    return target


def _order(name: str) -> Tuple[str, int]:
    """A history folder's place in time: its UTC stamp and its number within that second (1 when none)."""
    label = name.split("-", 1)[0]
    stamp, _, number = label.partition(".")
    return stamp, int(number) if number.isdigit() else 1


def deploy(served: Path, candidate: Path, old_kind: str = REPLACED) -> Optional[Path]:
    """Make the bundle at ``candidate`` the served one at ``served``; returns where the served bundle was kept
    (None when there was none). ``candidate`` must be on the same filesystem (an export into the models folder).
    """
    served, candidate = Path(served), Path(candidate)
    manifest = load_manifest(candidate, verify=True)  # a whole, uncorrupted bundle, before anything moves
    if manifest.patient != served.name:
        raise BundleError(
            f"the bundle '{candidate}' is patient '{manifest.patient}', not '{served.name}'",
            f"export it with --patient {served.name}",
        )
    with _patient_lock(served):
        if not served.exists():
            os.rename(candidate, served)
            return None
        carry_board(served, candidate)
        if exchange_paths(candidate, served):
            carry_board(candidate, served)  # a board edit made while the two were swapped
            return keep(served, candidate, old_kind)
        # No atomic exchange here: two renames, between which the patient's folder is briefly missing (a
        # server polling at that instant drops the patient until its next reload).
        log.warning("this system cannot swap folders atomically; renaming '%s' in two steps", served)
        kept = keep(served, served, old_kind)
        os.rename(candidate, served)
        return kept


def rollback(served: Path, to: Optional[str] = None) -> Version:
    """Serve an earlier bundle again: the :func:`previous` one, or the history folder named ``to``. The
    bundle served until now is kept in the history as ``rolled-back``. Returns the version put back."""
    served = Path(served)
    if not served.is_dir():
        raise ResonanceError(
            f"no served bundle at '{served}'",
            "pass the patient's folder in the models folder, e.g. bundles/grandpa",
        )
    earlier = versions(served)
    if to is not None:
        chosen = next((v for v in earlier if v.name == to), None)
        if chosen is None:
            raise ResonanceError(
                f"no version '{to}' in the history of '{served}'",
                f"`resonance rollback --bundle {served} --list` shows them",
            )
    else:
        chosen = previous(served, earlier)
        if chosen is None:
            raise ResonanceError(
                f"'{served}' has no earlier bundle to go back to (none exported before the one it serves)",
                f"`resonance rollback --bundle {served} --list` shows its history; --to NAME serves any of them",
            )
    deploy(served, chosen.path, old_kind=ROLLED_BACK)
    return chosen


def previous(served: Path, earlier: List[Version]) -> Optional[Version]:
    """What a plain rollback serves: of the bundles that were served before (replaced or rolled back, not a
    candidate never deployed), those exported before the served one, and of them the one served last. So
    rollback after rollback walks back through older models (never forward to one just rolled back from),
    and after a roll forward with --to it goes back to the model served before it."""
    try:
        now = load_manifest(served, verify=False).created
    except BundleError:
        now = None  # the served folder is no readable bundle: any bundle served before is earlier
    served_before = [v for v in earlier if v.kind != NOT_DEPLOYED and v.manifest is not None]
    older = [v for v in served_before if now is None or v.manifest.created < now]
    return older[0] if older else None  # ``earlier`` is newest first: the last one moved out of service


def _patient_lock(served: Path):
    """One deploy or rollback of a patient at a time (two updates finishing together must not interleave)."""
    return file_lock(history_dir(served) / ".lock")
