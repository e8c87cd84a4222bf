"""labels.json in the guide's layout: ``[{"audio": "audio/001_我想喝水.wav", "text": "我想喝水"}, ...]``.

``load_labels`` is what training calls: strict, small and fast (it reads no audio). ``parse_labels`` returns
every schema problem instead of stopping at the first, for ``resonance data check``.
"""

from __future__ import annotations

import codecs
import json
import ntpath
import os
import posixpath
import reprlib
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Sequence, Set, Tuple, Union

from resonance.errors import ResonanceError
from resonance.fsutil import read_json_file, write_bytes_atomic, write_json_atomic

LABELS_FILE = "labels.json"
AUDIO_DIR = "audio"
# Extensions `convert` reads and `check` looks for among unlabelled files.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".webm", ".wma")
_SHOW_MISSING = 5  # how many missing files an error lists before "… and N more"
_SHOWN_CHARS = 60  # how much of a label or path a message quotes: a 5,000-character label is not repeated

# Ends hints of errors other commands raise; `data check` itself, which does list them, drops it (see below).
CHECK_LISTS_ALL = "; `resonance data check DIR` lists every problem"
LABELS_HINT = (
    'labels.json must be a list like [{"audio": "audio/001_我想喝水.wav", "text": "我想喝水"}, ...] '
    "with paths relative to the data folder" + CHECK_LISTS_ALL
)
# Recordings named NNN_<text> but no labels.json: what makes one (the only place that says so).
LABELS_FROM_NAMES = (
    "`resonance data convert SRC DST` makes labels.json from file names (NNN_text.wav) when SRC has none"
)


@dataclass(frozen=True)
class Utterance:
    """One recording and what was said in it."""

    audio: Path  # absolute path of the audio file
    text: str  # the transcript, surrounding whitespace removed
    rel: str  # the path exactly as written in labels.json


@dataclass(frozen=True)
class LabelIssue:
    """A schema problem in labels.json: which entry, what is wrong, what to do."""

    item: str  # "labels.json" or "labels.json[3]" (0-based entry index)
    code: str
    message: str
    fix: str


def load_labels(data_dir: Union[str, Path], check_files: bool = True, option: str = "") -> List[Utterance]:
    """Read ``data_dir/labels.json``; raise ResonanceError on the first problem (with a hint).

    With ``check_files`` every referenced audio file must exist; the error lists the first few missing.
    ``option`` is the command-line option that named ``data_dir`` (e.g. ``--new``), for the hints.
    """
    data_dir = _existing_dir(data_dir)
    utterances, issues = parse_labels(data_dir, _read_json(data_dir / LABELS_FILE, option))
    if issues:
        first = issues[0]
        more = f" (and {len(issues) - 1} more problems)" if len(issues) > 1 else ""
        raise ResonanceError(f"{first.item}: {first.message}{more}", first.fix)
    if not utterances:
        raise ResonanceError(f"{data_dir / LABELS_FILE} has no entries", "add your recordings to labels.json")
    if check_files:
        missing = [u.rel for u in utterances if not u.audio.is_file()]
        if missing:
            raise ResonanceError(
                f"{len(missing)} audio file(s) listed in {data_dir / LABELS_FILE} do not exist: "
                f"{first_few(missing, _SHOW_MISSING)}",
                "fix the paths in labels.json or copy the files into the data folder" + CHECK_LISTS_ALL,
            )
    return utterances


def without_check_pointer(hint: str) -> str:
    """``hint`` as `data check` shows it: not sending the user back to the command they just ran."""
    return hint[: -len(CHECK_LISTS_ALL)] if hint.endswith(CHECK_LISTS_ALL) else hint


def read_labels_json(data_dir: Union[str, Path]) -> Any:
    """The parsed JSON of ``data_dir/labels.json`` (any shape), or ResonanceError if it cannot be read."""
    return _read_json(_existing_dir(data_dir) / LABELS_FILE)


def parse_labels(data_dir: Path, data: Any) -> Tuple[List[Utterance], List[LabelIssue]]:
    """Validate the JSON of labels.json; return the valid entries and a list of every problem found."""
    if not isinstance(data, list):
        issue = LabelIssue(
            LABELS_FILE, "labels-not-list", f"is a JSON {_json_type(data)}, not a list", LABELS_HINT
        )
        return [], [issue]
    root = Path(data_dir).resolve()
    utterances, issues = [], []
    for index, entry in enumerate(data):
        item = f"{LABELS_FILE}[{index}]"
        try:
            utterances.append(_parse_entry(root, entry))
        except _EntryError as exc:
            issues.append(LabelIssue(item, exc.code, exc.message, exc.fix))
    return utterances, issues


def referenced_paths(data_dir: Union[str, Path], data: Any) -> Set[Path]:
    """Every audio path labels.json mentions, valid entry or not (so a bad entry's file is not 'unlabelled')."""
    root = Path(data_dir).resolve()
    paths = set()
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("audio"), str):
            try:
                paths.add(root / _safe_relative_path(entry["audio"]))
            except _EntryError:
                continue
    return paths


def save_labels(data_dir: Union[str, Path], entries: Iterable[Union[Utterance, Mapping[str, Any]]]) -> Path:
    """Write ``data_dir/labels.json`` atomically from Utterances or ``{"audio", "text"}`` dicts."""
    rows = []
    for entry in entries:
        if isinstance(entry, Utterance):
            rows.append({"audio": entry.rel, "text": entry.text})
        else:
            rows.append({"audio": str(entry["audio"]).replace("\\", "/"), "text": str(entry["text"])})
    path = Path(data_dir) / LABELS_FILE
    write_json_atomic(path, rows)
    return path


def append_labels(data_dir: Union[str, Path], entries: Sequence[Mapping[str, str]]) -> Path:
    """Add ``{"audio", "text"}`` entries at the end of ``data_dir/labels.json`` (made if missing), atomically.

    The file is not re-serialised: the new entries are inserted before its closing ``]``, so every byte of
    what was there stays as it was -- other keys a person or tool added (``speaker``, ``notes``, ``split``),
    their order, the escapes and the indentation, a byte-order mark.
    """
    path = Path(data_dir) / LABELS_FILE
    rows = [{"audio": str(e["audio"]).replace("\\", "/"), "text": str(e["text"])} for e in entries]
    if not path.exists():
        return save_labels(data_dir, rows)
    raw = path.read_bytes()
    bom = codecs.BOM_UTF8 if raw.startswith(codecs.BOM_UTF8) else b""
    text = raw[len(bom) :].decode("utf-8")
    existing = read_labels_json(data_dir)
    if not isinstance(existing, list):
        raise ResonanceError(f"{path} is not a list of entries", LABELS_HINT)
    if not rows:
        return path
    end = text.rstrip()  # a JSON list ends with "]"; only white space may follow it
    body = end[:-1].rstrip()
    before_bracket = end[len(body) : -1]  # the white space before "]": kept after the new entries
    if not before_bracket:
        before_bracket = "\n"
    added = ",\n".join(
        "  " + json.dumps(row, ensure_ascii=False, indent=2).replace("\n", "\n  ") for row in rows
    )
    joined = f"{body}\n{added}" if body.endswith("[") else f"{body},\n{added}"
    updated = joined + before_bracket + "]" + text[len(end) :]
    if json.loads(updated) != existing + rows:  # the splice is checked before anything is written
        raise RuntimeError(f"appending to {path} would change its entries")
    write_bytes_atomic(path, bom + updated.encode("utf-8"))
    return path


def first_few(names: List[str], most: int) -> str:
    """``names`` joined, the first ``most`` of them and "… and N more" for the rest (a message stays a line)."""
    more = f" … and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def shorten(text: str, limit: int = _SHOWN_CHARS) -> str:
    """``text`` for a message: its start and its length when longer than ``limit`` characters."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


def _brief(value: Any) -> str:
    """A JSON value as a message quotes it: a few items and levels (reprlib), however big or deep it is."""
    return shorten(reprlib.repr(value))


def _safe_relative_path(rel: str) -> str:
    """Normalise a labels.json path (``\\`` allowed, as Windows users write them); refuse absolute or ``..``."""
    if ntpath.isabs(rel) or posixpath.isabs(rel) or ntpath.splitdrive(rel)[0]:
        raise _EntryError(
            "absolute-path",
            f"audio path '{shorten(rel)}' is absolute",
            "write paths relative to the data folder, e.g. audio/001_我想喝水.wav",
        )
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise _EntryError(
            "path-outside-folder",
            f"audio path '{shorten(rel)}' points outside the data folder",
            "keep the audio files inside the data folder (audio/...) and write paths without '..'",
        )
    return norm


class _EntryError(Exception):
    def __init__(self, code: str, message: str, fix: str) -> None:
        super().__init__(message)
        self.code, self.message, self.fix = code, message, fix


def _parse_entry(root: Path, entry: Any) -> Utterance:
    if not isinstance(entry, dict):
        raise _EntryError("entry-not-object", f"is a JSON {_json_type(entry)}, not an object", LABELS_HINT)
    missing = [key for key in ("audio", "text") if key not in entry]
    if missing:
        raise _EntryError("missing-key", f"has no {' or '.join(repr(k) for k in missing)} key", LABELS_HINT)
    rel, text = entry["audio"], entry["text"]
    if not isinstance(rel, str) or not rel.strip():
        raise _EntryError(
            "bad-audio-path", f"'audio' must be a non-empty string, got {_brief(rel)}", LABELS_HINT
        )
    if not isinstance(text, str):
        raise _EntryError(
            "bad-text", f"'text' must be a string, got {_json_type(text)} {_brief(text)}", LABELS_HINT
        )
    if not text.strip():
        raise _EntryError(
            "empty-text",
            f"text of '{shorten(rel)}' is empty",
            "write what is said in the recording, or remove the entry",
        )
    if says_nothing(text):
        raise _EntryError(
            "empty-text",
            f"text of '{shorten(rel)}' is only punctuation: {_brief(text.strip())}",
            "write the words said in the recording, or remove the entry",
        )
    return Utterance(audio=_inside_folder(root, _safe_relative_path(rel), rel), text=text.strip(), rel=rel)


def says_nothing(text: str) -> bool:
    """Whether a label has no character the CER counts (only punctuation, spaces or invisible characters).

    Such a label scores CER 0 whatever the model writes, so a run on it reports "100 % right" for nothing.
    The same stripping as resonance.text.normalize_for_cer, less the Simplified conversion (it needs OpenCC,
    and it maps a character to a character, so it never empties a label).
    """
    from resonance.text import strip_invisible, strip_punctuation

    return not strip_punctuation(unicodedata.normalize("NFKC", strip_invisible(text))).strip()


def _inside_folder(root: Path, norm: str, rel: str) -> Path:
    """``root / norm``, refused when a symbolic link on the way leads outside ``root`` (the resolved folder).

    A dataset is one folder: training, `data convert` and `data check` read only what is inside it, so a
    link to /etc/… or to another person's recordings is never read (or copied) as if it were this person's.
    """
    path = root / norm
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise _EntryError(
            "link-outside-folder",
            f"audio path '{shorten(rel)}' is a symbolic link to {shorten(str(real), 200)}, outside the data folder",
            "copy the recording into the data folder (audio/...) instead of linking to it",
        )
    return path


def _existing_dir(data_dir: Union[str, Path]) -> Path:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ResonanceError(
            f"data folder '{data_dir}' does not exist"
            if not data_dir.exists()
            else f"'{data_dir}' is not a folder",
            "pass the folder that holds labels.json and audio/",
        )
    return data_dir


def _data_subfolders(folder: Path) -> List[str]:
    """Names of ``folder``'s subfolders holding a labels.json, e.g. the patients' in `serve --collect DIR`."""
    try:
        return sorted(sub.name for sub in folder.iterdir() if (sub / LABELS_FILE).is_file())
    except OSError:
        return []


def _folder_of_data_folders(folder: Path, subfolders: List[str], option: str) -> ResonanceError:
    """The root of `serve --collect DIR` (one folder per patient) passed as a data folder: name the right ones."""
    example = shlex.quote(str(folder / subfolders[0]))
    return ResonanceError(
        f"{folder / LABELS_FILE} not found: '{folder}' holds data folders "
        f"({first_few(subfolders, _SHOW_MISSING)}), each with a labels.json of its own",
        f"pass one of them, e.g. {option + ' ' if option else ''}{example} (`resonance serve --collect DIR` "
        "keeps each patient's recordings in DIR/<patient>)",
    )


def _read_json(path: Path, option: str = "") -> Any:
    subfolders = [] if path.is_file() else _data_subfolders(path.parent)
    if subfolders:
        raise _folder_of_data_folders(path.parent, subfolders, option)
    if not path.is_file():
        raise ResonanceError(
            f"{path} not found",
            "put a labels.json next to audio/ (see the guide); " + LABELS_FROM_NAMES,
        )
    # fsutil.read_json_file: not UTF-8, not JSON or nested too deeply is one error, never a traceback.
    return read_json_file(
        path,
        "labels file",
        "fix the JSON there (a missing comma or quote, or a trailing comma, is typical; in Notepad save as "
        "UTF-8); " + LABELS_HINT,
    )


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
