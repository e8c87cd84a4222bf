"""The phrase board: the patient's vocabulary, the phrases `--mode phrases|both` matches a recording against.

Two sources, kept apart so that each has one home:

* **recorded**: every phrase of the recordings the model was trained on (training and validation splits),
  written by `resonance export` into the bundle's ``manifest.phrases``; the model has heard the patient say them.
* **added** / removed by the caregiver later (`resonance phrases add|remove`), without a re-export: kept in
  ``board.json`` beside the manifest. The model can score a phrase it was never trained on, less surely.

``board.json`` (format_version 1)::

    {"format": "resonance-board", "format_version": 1,
     "added": ["帮我拿手机", ...],       # on the board although never recorded (or recorded and re-added)
     "removed": ["我想咳嗽", ...]}       # recorded, but taken off the board by the caregiver

The board = the recorded phrases less the removed ones, then the added ones. It is a small file that is not
part of the bundle's hashed files: a running server re-reads it when it changes without reloading the model
(runtime/models.py), and ``resonance update`` carries the caregiver's edits over to a new bundle
(:func:`carry_board`). A bundle without a board.json (exported before it existed) has just its recorded list.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from resonance.errors import ResonanceError
from resonance.runtime.bundle import BundleError, Manifest, load_manifest
from resonance.runtime.phrases import PhraseSet, clean_phrases

BOARD_FILE = "board.json"
BOARD_FORMAT = "resonance-board"
BOARD_FORMAT_VERSION = 1
RECORDED = "recorded"  # the model was trained on recordings of it
ADDED = "added"  # the caregiver put it on the board


@dataclass(frozen=True)
class BoardPhrase:
    text: str
    source: str  # RECORDED or ADDED

    def to_json(self) -> Dict[str, str]:
        return {"text": self.text, "source": self.source}


@dataclass(frozen=True)
class Board:
    """A bundle's phrase board: its recorded phrases and the caregiver's edits."""

    recorded: Tuple[str, ...] = ()  # manifest.phrases, in the order export wrote them
    added: Tuple[str, ...] = ()  # board.json "added"
    removed: Tuple[str, ...] = ()  # board.json "removed"

    @property
    def phrases(self) -> Tuple[BoardPhrase, ...]:
        """The board, recorded phrases first (as exported), then the added ones (in the order added)."""
        gone, recorded = set(self.removed), set(self.recorded)
        kept = [BoardPhrase(t, RECORDED) for t in self.recorded if t not in gone]
        kept += [BoardPhrase(t, ADDED) for t in self.added if t not in recorded or t in gone]
        return tuple(kept)

    @property
    def texts(self) -> Tuple[str, ...]:
        """What the phrase matcher scores."""
        return tuple(p.text for p in self.phrases)

    def __len__(self) -> int:
        return len(self.phrases)

    def to_json(self) -> List[Dict[str, str]]:
        """The board as the API and the CLI show it: [{"text", "source"}, ...] (one shape for every reader)."""
        return [p.to_json() for p in self.phrases]

    def on_board(self, phrases: Sequence[str]) -> List[str]:
        """Those of ``phrases`` the board has now (cleaned as the board keeps them)."""
        on_board = set(self.texts)
        return [p for p in clean_phrases(phrases) if p in on_board]

    def edited(
        self, add: Sequence[str] = (), remove: Sequence[str] = (), bundle_dir: Optional[Path] = None
    ) -> Board:
        """This board with ``add`` put on it and ``remove`` taken off (a phrase not on it is an error).

        ``bundle_dir``, where the board is kept, only makes the error's hint a command to copy."""
        add, remove = clean_phrases(add), clean_phrases(remove)
        on_board = set(self.texts)
        missing = [p for p in remove if p not in on_board]
        if missing:
            where = shlex.quote(str(bundle_dir)) if bundle_dir is not None else "<bundle folder>"
            raise ResonanceError(
                f"not on the phrase board: {', '.join(missing)}",
                f"`resonance phrases list --bundle {where}` shows the board",
            )
        added = [t for t in self.added if t not in remove]
        removed = [t for t in self.removed if t not in add]
        removed += [t for t in remove if t in self.recorded and t not in removed]
        recorded_on_board = set(self.recorded) - set(removed)
        added += [t for t in add if t not in added and t not in recorded_on_board]
        return Board(self.recorded, tuple(added), tuple(removed))

    def with_recorded(self, recorded: Sequence[str]) -> Board:
        """The caregiver's edits applied to another bundle's recorded phrases (``resonance update``): an added
        phrase that is now recorded becomes a recorded one; a removed phrase stays off the board."""
        recorded = tuple(clean_phrases(recorded))
        added = tuple(t for t in self.added if t not in recorded)
        return Board(recorded, added, self.removed)

    def edits_json(self) -> Dict[str, Any]:
        return {
            "format": BOARD_FORMAT,
            "format_version": BOARD_FORMAT_VERSION,
            "added": list(self.added),
            "removed": list(self.removed),
        }


def read_board(bundle_dir: Union[str, Path], manifest: Optional[Manifest] = None) -> Board:
    """The board of a bundle: ``manifest.phrases`` (recorded) with the edits in its board.json, if any."""
    bundle_dir = Path(bundle_dir)
    if manifest is None:
        manifest = load_manifest(bundle_dir, verify=False)
    recorded = tuple(clean_phrases(manifest.phrases or []))
    path = bundle_dir / BOARD_FILE
    if not path.is_file():
        return Board(recorded)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"{path} cannot be read: {exc}",
            f"fix the file, or delete it to go back to the recorded phrases of '{bundle_dir}'",
        ) from exc
    if not isinstance(data, dict) or data.get("format") != BOARD_FORMAT:
        raise BundleError(
            f"{path} is not a phrase board file", f"delete it or fix its 'format' ({BOARD_FORMAT})"
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version > BOARD_FORMAT_VERSION:
        raise BundleError(
            f"{path} has format version {version!r}, newer than this runtime understands",
            "upgrade resonance on this device: pip install -U resonance-asr",
        )
    lists = []
    for key in ("added", "removed"):
        values = data.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BundleError(f"{path}: '{key}' must be a list of phrases", "fix the file or delete it")
        lists.append(tuple(clean_phrases(values)))
    return Board(recorded, *lists)


def write_board(bundle_dir: Union[str, Path], board: Board) -> None:
    """Save the caregiver's edits (atomically); the manifest and the model files are untouched."""
    from resonance.fsutil import write_json_atomic

    write_json_atomic(Path(bundle_dir) / BOARD_FILE, board.edits_json())


def edit_board(bundle_dir: Union[str, Path], add: Sequence[str] = (), remove: Sequence[str] = ()) -> Board:
    """Add and/or remove phrases of a bundle's board; returns the board (unchanged when nothing is given).

    New phrases are checked against the bundle's tokenizer before anything is written; removing a phrase that
    is not on the board, or a blank phrase, is an error (a typo would otherwise look like success).
    """
    refuse_blank_phrases([*add, *remove])
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir, verify=False)
    board = read_board(bundle_dir, manifest)
    if not add and not remove:
        return board
    updated = board.edited(add, remove, bundle_dir)
    new = [t for t in updated.texts if t not in set(board.texts)]
    if new:
        from resonance.runtime.tokenizer import Tokenizer

        tokenizer = Tokenizer(bundle_dir / manifest.files["tokenizer"]["path"], manifest.tokens.eot)
        budget = manifest.model.max_target_positions - len(manifest.tokens.sot_sequence) - 1
        PhraseSet.build(new, tokenizer, budget)  # every new phrase can be scored
    if updated != board:
        write_board(bundle_dir, updated)
    return updated


def refuse_blank_phrases(phrases: Sequence[str]) -> None:
    """A blank phrase (``""``, spaces) is a slip in the command, e.g. an empty shell variable: never skipped
    silently, since the phrase meant is then missing from the board."""
    blank = [i for i, phrase in enumerate(phrases, start=1) if isinstance(phrase, str) and not phrase.strip()]
    if blank:
        raise ResonanceError(
            f"phrase {blank[0]} of the {len(phrases)} given is blank",
            'write each phrase\'s text, or leave out the empty argument (e.g. a "" or an unset $VARIABLE)',
        )


def carry_board(source_dir: Union[str, Path], target_dir: Union[str, Path]) -> Board:
    """Give the bundle at ``target_dir`` the caregiver's edits of the one at ``source_dir`` (update, rollback)."""
    board = read_board(source_dir).with_recorded(read_board(target_dir).recorded)
    write_board(target_dir, board)
    return board
