"""`resonance data check`: find every problem in a dataset before training does, and say how to fix it.

Errors are things training must not see (wrong sample rate, silence, missing files, empty labels);
warnings are worth a look but fine to train on (a long clip, a repeated phrase, few recordings).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import numpy as np

from resonance.data.labels import (
    AUDIO_DIR,
    AUDIO_EXTENSIONS,
    LABELS_FILE,
    LABELS_FROM_NAMES,
    Utterance,
    first_few,
    parse_labels,
    read_labels_json,
    referenced_paths,
    shorten,
    without_check_pointer,
)
from resonance.data.quality import level_findings, measure
from resonance.errors import AudioError, ResonanceError
from resonance.text import invisible_characters, normalize_for_cer, to_simplified

TARGET_RATE = 16000
FEW_UTTERANCES = 30  # below this training has too little to learn from; the guide asks for 50-100
# Fast English is ~15 characters a second (spaces included), Chinese ~5: 25 flags only labels that cannot
# belong to their clip (a pasted paragraph), never a fast speaker.
MAX_CHARS_PER_SECOND = 25
_SEVERITY_ORDER = {"error": 0, "warning": 1}
_NAME_WITH_TEXT = re.compile(r"^\d+[_\- ](.+?)(?:[_\- ]\d+)?$")  # 001_我想喝水 (a trailing _2 = take number)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
# File names the one "not listed in labels.json" warning quotes before "… and N more".
_SHOW_UNLABELLED = 3
# The findings of a file that is not a readable WAV (missing, unreadable, another format): it adds nothing to
# the minutes, and is no usable utterance until it is converted or replaced.
_UNREAD_CODES = frozenset({"missing-file", "unreadable", "not-wav"})


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" (fix before training) or "warning" (worth a look)
    item: str  # the audio path as in labels.json, "labels.json[3]", "labels.json" or "dataset"
    code: str  # stable identifier, e.g. "sample-rate", "silent", "duplicate-text"
    message: str
    fix: str  # what to do about it
    # Every file a grouped problem is about, where the message names only the first few (`--json` readers
    # need them all); empty for a problem about one item.
    files: List[str] = field(default_factory=list)


@dataclass
class CheckReport:
    data_dir: Path
    problems: List[Problem] = field(default_factory=list)
    utterances: int = 0  # valid entries in labels.json
    unusable: int = 0  # of those, entries whose audio file is missing or cannot be read as WAV
    total_seconds: float = 0.0  # audio that could be read, each file once

    @property
    def usable(self) -> int:
        """Entries whose audio is a readable WAV file, the dataset's format (a file in another format is an error
        to convert first, though training might decode it): the count the summary gives."""
        return self.utterances - self.unusable

    @property
    def errors(self) -> List[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> List[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def to_json(self) -> Dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "utterances": self.utterances,
            "usable_utterances": self.usable,
            "unusable_utterances": self.unusable,
            "total_seconds": round(self.total_seconds, 2),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [asdict(p) for p in self.problems],
        }


def check_dataset(data_dir: Union[str, Path]) -> List[Problem]:
    """Every problem in the dataset at ``data_dir``, errors first."""
    return inspect_dataset(data_dir).problems


def inspect_dataset(data_dir: Union[str, Path]) -> CheckReport:
    """Check labels.json and every audio file; a folder that does not exist is a ResonanceError."""
    data_dir = Path(data_dir)
    report = CheckReport(data_dir)
    try:
        raw = read_labels_json(data_dir)
    except ResonanceError as exc:
        if not data_dir.is_dir():
            raise
        fix = without_check_pointer(exc.hint)  # this is that command: no "run data check" in its own table
        report.problems.append(Problem("error", LABELS_FILE, "labels-unreadable", exc.message, fix))
        return report
    utterances, issues = parse_labels(data_dir, raw)
    problems = [Problem("error", i.item, i.code, i.message, without_check_pointer(i.fix)) for i in issues]
    if not isinstance(raw, list):  # nothing else can be checked against it
        report.problems = problems
        return report
    report.utterances = len(utterances)
    if utterances or not issues:  # "no usable entries" would only repeat the entries' errors
        problems += _count_problems(len(utterances))
    problems += _duplicate_reference_problems(utterances)
    problems += _duplicate_text_problems(utterances)
    problems += _traditional_problems(utterances, data_dir)
    problems += _invisible_character_problems(utterances)
    file_problems, seconds, unread = _file_problems(data_dir, utterances)
    problems += file_problems
    report.total_seconds = seconds
    report.unusable = sum(u.audio in unread for u in utterances)
    problems += _unlabelled_problems(data_dir, referenced_paths(data_dir, raw))
    report.problems = sorted(problems, key=lambda p: _SEVERITY_ORDER.get(p.severity, 9))
    return report


TRADITIONAL_BACKUP = "labels.traditional.json"  # what `data check --to-simplified` keeps of the original


def traditional_labels(utterances: List[Utterance]) -> List[Tuple[Utterance, str]]:
    """The labels written (partly) in Traditional characters, each with its Simplified form."""
    found = []
    for utterance in utterances:
        simplified = to_simplified(utterance.text)
        if simplified != utterance.text:
            found.append((utterance, simplified))
    return found


def _traditional_problems(utterances: List[Utterance], data_dir: Path) -> List[Problem]:
    """Whisper's Chinese output is made Simplified and CER is judged in Simplified: Traditional labels teach the
    model one script and score it in another. One warning for the dataset, with the conversion that fixes it."""
    found = traditional_labels(utterances)
    if not found:
        return []
    utterance, simplified = found[0]
    return [
        Problem(
            "warning",
            LABELS_FILE,
            "traditional-labels",
            f"{len(found)} of {len(utterances)} labels are written in Traditional characters, e.g. "
            f"'{shorten(utterance.text)}' (Simplified: '{shorten(simplified)}'); models are trained and judged "
            "in Simplified",
            f"convert them: `resonance data check {shlex.quote(str(data_dir))} "
            f"--to-simplified` (the original is kept as {TRADITIONAL_BACKUP})",
        )
    ]


def _invisible_character_problems(utterances: List[Utterance]) -> List[Problem]:
    """A label with a zero-width space (pasted from a chat app, a web page) looks like its phrase but is another
    text: training learns an invisible token, and the phrase's recordings are counted as two phrases."""
    problems = []
    for utterance in utterances:
        found = invisible_characters(utterance.text)
        if found:
            problems.append(
                Problem(
                    "warning",
                    utterance.rel,
                    "invisible-characters",
                    f"the label '{shorten(utterance.text)}' holds invisible character(s) {', '.join(found)}",
                    "remove the invisible character(s) from its text in labels.json",
                )
            )
    return problems


def convert_labels_to_simplified(data_dir: Union[str, Path]) -> int:
    """Rewrite labels.json with every text in Simplified characters, keeping the original beside it as
    :data:`TRADITIONAL_BACKUP` (never overwritten: a second conversion must not lose the first original).
    Returns how many texts changed (0: nothing written)."""
    from resonance.fsutil import write_bytes_atomic, write_json_atomic

    data_dir = Path(data_dir)
    raw = read_labels_json(data_dir)
    if not isinstance(raw, list):
        raise ResonanceError(
            f"{data_dir / LABELS_FILE} is not a list of entries, so nothing was converted",
            f'make it a list like [{{"audio": "audio/001_我想喝水.wav", "text": "我想喝水"}}] (`resonance data check '
            f"{data_dir}` without --to-simplified shows every problem), then run this again",
        )
    changed = 0
    converted = []
    for entry in raw:
        if isinstance(entry, dict) and isinstance(entry.get("text"), str):
            simplified = to_simplified(entry["text"])
            changed += simplified != entry["text"]
            entry = {**entry, "text": simplified}
        converted.append(entry)
    if not changed:
        return 0
    backup = data_dir / TRADITIONAL_BACKUP
    if backup.exists():
        raise ResonanceError(
            f"{backup} already exists (an earlier conversion's original)",
            "move it somewhere safe, then run the conversion again",
        )
    write_bytes_atomic(backup, (data_dir / LABELS_FILE).read_bytes())
    write_json_atomic(data_dir / LABELS_FILE, converted)
    return changed


def _count_problems(count: int) -> List[Problem]:
    if count == 0:
        return [
            Problem(
                "error", LABELS_FILE, "no-utterances", "no entries: nothing to train on", "add recordings"
            )
        ]
    if count < FEW_UTTERANCES:
        return [
            Problem(
                "warning",
                "dataset",
                "few-utterances",
                f"only {count} utterances; training works best with 50-100",
                "record more phrases (`resonance data record`), the phrases the person uses most",
            )
        ]
    return []


def _duplicate_reference_problems(utterances: List[Utterance]) -> List[Problem]:
    by_file: Dict[Path, List[int]] = defaultdict(list)
    for index, utterance in enumerate(utterances):
        by_file[utterance.audio].append(index)
    problems = []
    for indices in by_file.values():
        if len(indices) > 1:
            texts = ", ".join(repr(shorten(utterances[i].text)) for i in indices[:4])
            problems.append(
                Problem(
                    "error",
                    utterances[indices[0]].rel,
                    "duplicate-audio",
                    f"one file is listed {len(indices)} times (texts: {texts})",
                    "keep one entry per recording; a second take needs its own file",
                )
            )
    return problems


def _duplicate_text_problems(utterances: List[Utterance]) -> List[Problem]:
    # The same phrase as training and CER see it: 我想喝水。and 我想喝水, or 說話 and 说话, are one phrase.
    by_text: Dict[str, List[Utterance]] = defaultdict(list)
    for utterance in utterances:
        by_text[normalize_for_cer(utterance.text)].append(utterance)
    problems = []
    for group in by_text.values():
        text = group[0].text
        files = {u.audio for u in group}
        if len(files) > 1:
            names = ", ".join(u.rel for u in group[:4]) + (" …" if len(group) > 4 else "")
            problems.append(
                Problem(
                    "warning",
                    f'"{shorten(text)}"',
                    "duplicate-text",
                    f"{len(files)} recordings of the same phrase ({names})",
                    "fine if they are separate takes; make sure each label matches its recording",
                )
            )
    return problems


def _file_problems(data_dir: Path, utterances: List[Utterance]) -> Tuple[List[Problem], float, Set[Path]]:
    """Every file's problems, the seconds of audio read, and the files that could not be read at all."""
    problems: List[Problem] = []
    total = 0.0
    unread: Set[Path] = set()
    seen: Dict[Path, str] = {}  # checked file -> its rel, so a file listed twice is checked once
    by_hash: Dict[str, str] = {}
    for utterance in utterances:
        if utterance.audio in seen:
            continue
        seen[utterance.audio] = utterance.rel
        findings, seconds, digest = _inspect_file(data_dir, utterance)
        problems += findings
        total += seconds
        if any(p.code in _UNREAD_CODES for p in findings):
            unread.add(utterance.audio)
        if digest is not None:
            if digest in by_hash:
                problems.append(
                    Problem(
                        "warning",
                        utterance.rel,
                        "identical-audio",
                        f"byte-for-byte the same recording as {by_hash[digest]}",
                        "a copied file: point this entry at its own recording, or remove it",
                    )
                )
            else:
                by_hash[digest] = utterance.rel
    return problems, total, unread


def _inspect_file(data_dir: Path, utterance: Utterance) -> Tuple[List[Problem], float, Optional[str]]:
    """Problems of one audio file, its duration, and the hash of its bytes (None when unreadable)."""
    import soundfile as sf

    rel, path = utterance.rel, utterance.audio
    convert = f"resonance data convert {shlex.quote(str(data_dir))} {shlex.quote(str(data_dir) + '-16k')}"
    if not path.is_file():
        fix = "fix the path in labels.json, or copy the recording there"
        return [Problem("error", rel, "missing-file", "audio file not found", fix)], 0.0, None
    try:
        content = path.read_bytes()
        info = sf.info(str(path))
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types; any of them means "not usable as it is"
        return [_unreadable(path, rel, exc, convert)], 0.0, None
    problems = [
        Problem("error", rel, code, message, fix) for code, message, fix in _format_errors(info, convert)
    ]
    problems += _truncation_problems(path, rel, info)
    if info.subtype != "PCM_16":
        problems.append(
            Problem(
                "warning",
                rel,
                "bit-depth",
                f"sample format is {info.subtype}, not 16-bit PCM",
                f"convert: {convert}",
            )
        )
    mono = samples.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        problems.append(
            Problem("error", rel, "not-finite", "contains NaN or infinite samples", f"convert: {convert}")
        )
        return problems, len(mono) / rate, None
    for finding in level_findings(measure(mono, rate)):
        problems.append(Problem(finding.severity, rel, finding.code, finding.message, finding.fix))
    problems += _name_mismatch(utterance)
    problems += _length_problems(utterance, len(mono) / rate)
    return problems, len(mono) / rate, hashlib.sha256(content).hexdigest()


def _unreadable(path: Path, rel: str, exc: Exception, convert: str) -> Problem:
    from resonance.audio import load_audio

    try:  # readable by the fallback decoder (PyAV): an MP3/M4A with a .wav name, say
        load_audio(path)
    except (AudioError, OSError):
        reason = str(exc).replace(str(path), rel)
        return Problem(
            "error",
            rel,
            "unreadable",
            f"cannot be read as audio ({reason})",
            "re-export or re-record it as 16 kHz mono WAV, or remove the entry",
        )
    return Problem("error", rel, "not-wav", "not a WAV file (another audio format)", f"convert: {convert}")


def _format_errors(info: Any, convert: str) -> List[Tuple[str, str, str]]:
    errors = []
    if info.format not in ("WAV", "WAVEX"):  # WAVEX: the "extensible" WAV header many recorders write
        errors.append(("format", f"is {info.format}, not WAV", f"convert: {convert}"))
    if info.samplerate != TARGET_RATE:
        errors.append(
            ("sample-rate", f"sample rate is {info.samplerate} Hz, not 16000 Hz", f"convert: {convert}")
        )
    if info.channels != 1:
        errors.append(("channels", f"has {info.channels} channels, not 1 (mono)", f"convert: {convert}"))
    return errors


_BYTES_PER_SAMPLE = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def _truncation_problems(path: Path, rel: str, info: Any) -> List[Problem]:
    """libsndfile quietly reads what is there; compare with the length the WAV header announces."""
    shortfall = wav_data_shortfall(path)
    if shortfall is None:
        return []
    declared, present = shortfall
    frame_bytes = _BYTES_PER_SAMPLE.get(info.subtype, 2) * max(1, info.channels)
    message = (
        f"truncated: the header announces {declared / frame_bytes / info.samplerate:.2f} s, "
        f"the file holds {present / frame_bytes / info.samplerate:.2f} s"
    )
    return [Problem("error", rel, "truncated", message, "copy the file again, or re-record it")]


def wav_data_shortfall(path: Path) -> Optional[Tuple[int, int]]:
    """(declared, present) bytes of a RIFF WAV 'data' chunk when the file is shorter than declared."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = fh.seek(0, 2)
        position = 12
        while position + 8 <= size:
            fh.seek(position)
            chunk = fh.read(8)
            length = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                present = size - position - 8
                # 0 / 0xFFFFFFFF: written by a stream that never went back to fill in the length
                if length in (0, 0xFFFFFFFF) or length <= present:
                    return None
                return length, present
            position += 8 + length + (length & 1)  # chunks are padded to even sizes
    return None


def _length_problems(utterance: Utterance, seconds: float) -> List[Problem]:
    """A label far longer than anyone can say in its recording: pasted text, or the labels of many clips."""
    limit = MAX_CHARS_PER_SECOND * max(seconds, 1.0)
    if len(utterance.text) <= limit:
        return []
    return [
        Problem(
            "warning",
            utterance.rel,
            "long-text",
            f"the label has {len(utterance.text):,} characters for {seconds:.1f} s of audio, more than anyone "
            f"says in that time (at most ~{MAX_CHARS_PER_SECOND} per second)",
            "write only what is said in this recording; Whisper learns one short phrase per clip",
        )
    ]


def _name_key(text: str) -> str:
    kept = (ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch)[0] in "LN")
    return "".join(kept).lower()


def _name_mismatch(utterance: Utterance) -> List[Problem]:
    """`001_我想喝水.wav` labelled "我想吃饭" usually means labels shifted by one entry."""
    match = _NAME_WITH_TEXT.match(utterance.audio.stem)
    if not match or not _CJK.search(match.group(1)):
        return []
    named, labelled = _name_key(match.group(1)), _name_key(utterance.text)
    if not named or named == labelled or named == _name_key(to_simplified(utterance.text)):
        return []  # the same words (a label in Traditional characters is its own warning)
    return [
        Problem(
            "warning",
            utterance.rel,
            "name-mismatch",
            f"file name says '{shorten(match.group(1))}' but the label says '{shorten(utterance.text)}'",
            "check that this label belongs to this recording (labels shifted by one entry?)",
        )
    ]


def _unlabelled_problems(data_dir: Path, referenced: Set[Path]) -> List[Problem]:
    """One warning for every audio file labels.json does not list: an empty labels.json beside 126 recordings
    is one line to act on, not 126."""
    stray = _unlabelled_files(data_dir, referenced)
    if not stray:
        return []
    if len(stray) == 1:
        item, message = stray[0], "audio file not listed in labels.json (training will not use it)"
        fix = f"add an entry with its text to labels.json, or move the file out of {AUDIO_DIR}/"
    else:
        item = f"{AUDIO_DIR}/"
        message = (
            f"{len(stray)} audio files not listed in labels.json (training will not use them): "
            f"{first_few(stray, _SHOW_UNLABELLED)}"
        )
        fix = f"add an entry with its text for each to labels.json, or move them out of {AUDIO_DIR}/"
    if not referenced:  # labels.json lists nothing (`[]`): making it from the file names is the quick way
        # ... once the empty one is out of the way: convert reads a labels.json that exists, even an empty one.
        fix += f"; or move the empty labels.json out of the folder: {LABELS_FROM_NAMES}"
    return [
        Problem(
            "warning", item, "unlabelled-audio", message, fix, files=list(stray) if len(stray) > 1 else []
        )
    ]


def _unlabelled_files(data_dir: Path, referenced: Set[Path]) -> List[str]:
    """The audio files under audio/ that labels.json does not mention, as paths relative to ``data_dir``."""
    audio_dir = data_dir / AUDIO_DIR
    if not audio_dir.is_dir():
        return []
    root = data_dir.resolve()
    stray = []
    for path in sorted(audio_dir.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
            continue
        rel = path.relative_to(data_dir).as_posix()
        if root / rel not in referenced:
            stray.append(rel)
    return stray


# --- output for people -----------------------------------------------------------------------------------


def format_report(report: CheckReport, width: Optional[int] = None) -> str:
    """A table (severity, item, problem, what to do) and a summary line."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    lines = []
    if report.problems:
        lines += _table(report.problems, max(width, 80))
        lines.append("")
    lines.append(summary_line(report))
    return "\n".join(lines)


def summary_line(report: CheckReport) -> str:
    errors, warnings = len(report.errors), len(report.warnings)
    verdict = "fix the errors before training" if errors else "ready for training"
    # Only readable WAV files count: a missing file is not an utterance to train on, a file in another format
    # is an error to convert first.
    count = (
        f"{report.usable} usable utterance{'s' * (report.usable != 1)} ({report.unusable} unusable)"
        if report.unusable
        else f"{report.utterances} utterance{'s' * (report.utterances != 1)}"
    )
    return (
        f"{report.data_dir}: {count}, {report.total_seconds / 60:.1f} minutes of audio, "
        f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)} — {verdict}"
    )


def _cells(text: str) -> int:
    """Terminal columns taken by text (CJK characters are two wide)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _cells(text))


def _clip(text: str, width: int) -> str:
    """The end of ``text`` in at most ``width`` columns, "…" in front when cut (the end of a path names it)."""
    if _cells(text) <= width:
        return text
    kept, used = [], 1  # 1: the "…"
    for ch in reversed(text):  # one pass: a 5,000-character label must not take quadratic time
        used += _cells(ch)
        if used > width:
            break
        kept.append(ch)
    return "…" + "".join(reversed(kept))


def _wrap(text: str, width: int) -> List[str]:
    """Greedy word wrap by terminal columns (textwrap counts a CJK character as one column, not two).

    Linear in the text's length: a word wider than the column (a long path, a Chinese phrase) is cut
    character by character as it is read.
    """
    lines: List[str] = []
    line, line_w = "", 0
    for word in text.split():
        word_w = _cells(word)
        if line and line_w + 1 + word_w <= width:
            line, line_w = f"{line} {word}", line_w + 1 + word_w
            continue
        if line:
            lines.append(line)
        piece: List[str] = []
        line_w = 0
        for ch in word:  # fits on its own line, or is cut into column-wide pieces
            ch_w = _cells(ch)
            if piece and line_w + ch_w > width:
                lines.append("".join(piece))
                piece, line_w = [], 0
            piece.append(ch)
            line_w += ch_w
        line = "".join(piece)
    return [*lines, line] if line else lines or [""]


def _table(problems: List[Problem], width: int) -> List[str]:
    headers = ("SEVERITY", "ITEM", "PROBLEM", "WHAT TO DO")
    sev_w = len(headers[0])
    item_w = min(40, max(_cells(headers[1]), *(_cells(p.item) for p in problems)))
    rest = max(40, width - sev_w - item_w - 6)  # 6: three two-space gutters
    problem_w = min(rest // 2, max(_cells(p.message) for p in problems))
    fix_w = rest - problem_w
    rows = [[headers[0]], [headers[1]], [headers[2]], [headers[3]]]
    lines = [_row(rows, (sev_w, item_w, problem_w))]
    for p in problems:
        cells = [[p.severity], [_clip(p.item, item_w)], _wrap(p.message, problem_w), _wrap(p.fix, fix_w)]
        for row in range(max(len(c) for c in cells)):
            lines.append(_row([c[row : row + 1] for c in cells], (sev_w, item_w, problem_w)))
    return lines


def _row(cells: List[List[str]], widths: Tuple[int, ...]) -> str:
    texts = [c[0] if c else "" for c in cells]
    padded = [_pad(text, w) for text, w in zip(texts, widths)] + texts[len(widths) :]
    return "  ".join(padded).rstrip()
