"""`resonance data convert SRC DST`: any recordings -> the guide's layout (16 kHz mono 16-bit WAV + labels.json).

SRC is only read. DST is built in a temporary folder and renamed into place at the end. Every file is tried
first, so one error names every bad file; if any failed, the temporary folder is removed and nothing is written,
never a half-converted dataset.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Set, Tuple, Union

import numpy as np

from resonance import __version__
from resonance.constants import SAMPLE_RATE
from resonance.data.check import wav_data_shortfall
from resonance.data.labels import (
    AUDIO_DIR,
    AUDIO_EXTENSIONS,
    LABELS_FILE,
    load_labels,
    read_labels_json,
    referenced_paths,
    save_labels,
)
from resonance.errors import AudioError, ResonanceError
from resonance.fsutil import (
    atomic_directory,
    read_json_file,
    refuse_overlap,
    refuse_to_overwrite,
    write_json_atomic,
)
from resonance.progress import progress

log = logging.getLogger(__name__)
WHAT = "output folder"
CONVERT_RECORD = "convert.json"  # written into DST: what it was converted from, and the files convert wrote
_NUMBER_PREFIX = re.compile(r"^\d+[_\-. ]*")  # "001_我想喝水" -> "我想喝水"
_SHOW_FAILED = 20  # how many unconvertible files one error lists before "… and N more"


@dataclass(frozen=True)
class ConvertResult:
    dst: Path
    converted: int  # audio files written
    utterances: int  # entries in DST/labels.json
    labels_from_names: bool  # True when SRC had no labels.json and texts come from file names
    skipped: List[str] = field(default_factory=list)  # SRC audio files not in its labels.json


@dataclass(frozen=True)
class _Job:
    source: Path
    rel: str  # how to name the source in messages
    text: str
    name: str  # output file name under DST/audio/


def convert_dataset(
    src: Union[str, Path], dst: Union[str, Path], force: bool = False, show_progress: bool = False
) -> ConvertResult:
    """Convert every recording of ``src`` into a new dataset at ``dst``; ``src`` is never modified.
    ``show_progress``: a progress bar on stderr (the CLI's)."""
    src, dst = Path(src), Path(dst)
    _check_paths(src, dst)
    refuse_to_overwrite(dst, force, WHAT, own=(CONVERT_RECORD,))
    _refuse_added_files(dst)
    has_labels = (src / LABELS_FILE).exists()
    if has_labels:
        jobs, skipped = _jobs_from_labels(src), _unlabelled(src)
    else:
        jobs, skipped = _jobs_from_names(src), []
    with atomic_directory(dst, force=force, what=WHAT, own=(CONVERT_RECORD,)) as tmp:
        (tmp / AUDIO_DIR).mkdir()
        # Raising here removes tmp: a failed file leaves nothing written (but is named with all the others).
        written = _convert_all(jobs, tmp / AUDIO_DIR, show_progress, has_labels)
        save_labels(tmp, [{"audio": f"{AUDIO_DIR}/{job.name}", "text": job.text} for job in jobs])
        # What this folder was made from, and which files convert wrote: `--force` replaces it only while it
        # holds nothing else (a dataset is a person's recordings; new takes may be recorded into it).
        write_json_atomic(
            tmp / CONVERT_RECORD,
            {
                "made_by": "resonance data convert",
                "resonance_version": __version__,
                "source": str(src.resolve()),
                "files": sorted(f"{AUDIO_DIR}/{name}" for name in written),
            },
        )
    return ConvertResult(dst, len(written), len(jobs), not has_labels, skipped)


def _convert_all(jobs: List[_Job], out_dir: Path, show_progress: bool, has_labels: bool) -> Dict[str, Path]:
    """Convert every job into ``out_dir`` (output name -> source); one error naming every file that failed."""
    written: Dict[str, Path] = {}
    failures: List[_Undecodable] = []
    tried: Set[str] = set()  # a file listed twice in labels.json is converted (or reported) once
    loop = progress(jobs, "converting", unit="recording") if show_progress else jobs
    for job in loop:
        if job.name in tried:
            continue
        tried.add(job.name)
        try:
            convert_file(job.source, out_dir / job.name, job.rel)
        except _Undecodable as exc:  # keep going: the user fixes every bad file in one round
            failures.append(exc)
            continue
        written[job.name] = job.source
    if failures:
        raise _failures_error(failures, len(tried), has_labels)
    return written


def _failures_error(failures: List[_Undecodable], total: int, has_labels: bool) -> ResonanceError:
    """One file: its own error (its hint is the most precise). More: every file and why, in one error."""
    if len(failures) == 1:
        return ResonanceError(failures[0].message, failures[0].hint)
    lines = [f"  {f.rel}: {f.reason}" for f in failures[:_SHOW_FAILED]]
    if len(failures) > _SHOW_FAILED:
        lines.append(f"  … and {len(failures) - _SHOW_FAILED} more")
    entries = " and their labels.json entries" if has_labels else ""
    return ResonanceError(
        f"{len(failures)} of {total} recordings could not be converted, so nothing was written:\n"
        + "\n".join(lines),
        f"replace each with a good copy (copy it again, or re-record it), or remove them{entries}; then run "
        "the command again",
    )


def _refuse_added_files(dst: Path) -> None:
    """An earlier conversion may be replaced (--force) only if no recording was added to it since."""
    record = dst / CONVERT_RECORD
    if not record.is_file():
        return
    made = read_json_file(
        record, "conversion record", f"delete {record} only if {dst} holds no recordings of yours"
    )
    ours = set(made.get("files", [])) if isinstance(made, dict) else set()
    ours |= {LABELS_FILE, CONVERT_RECORD}
    added = sorted(
        p.relative_to(dst).as_posix()
        for p in dst.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.relative_to(dst).as_posix() not in ours
    )
    if added:
        shown = ", ".join(added[:5]) + (" …" if len(added) > 5 else "")
        raise ResonanceError(
            f"'{dst}' was made by `data convert`, but {len(added)} file(s) were added to it since: {shown}; "
            "--force would delete them",
            "convert into another folder, or move those files out first (nothing was changed)",
        )


class _Undecodable(ResonanceError):
    """One source file that cannot be converted: which, why, and what to do (convert_dataset lists them all)."""

    def __init__(self, rel: str, message: str, reason: str, hint: str) -> None:
        super().__init__(message, hint)
        self.rel, self.reason = rel, reason


def convert_file(source: Path, out: Path, rel: str = "") -> None:
    """Decode ``source`` (any rate, channels, depth, format) and write 16 kHz mono 16-bit WAV to ``out``."""
    import soundfile as sf

    samples = _read_source(source, rel or str(source))
    # Resampling can overshoot a full-scale signal slightly; clip rather than wrap around in int16.
    sf.write(str(out), np.clip(samples, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
    log.debug("converted %s -> %s", rel or source, out)


def _read_source(source: Path, name: str) -> np.ndarray:
    """The samples of ``source`` at 16 kHz mono, or _Undecodable saying why not (``name``: as messages say it)."""
    from resonance.audio import load_audio

    try:
        if source.stat().st_size == 0:
            raise _Undecodable(
                name,
                f"could not convert '{name}': the file is empty (0 bytes)",
                "the file is empty (0 bytes)",
                "copy it again or re-record it, or remove it (and its labels.json entry), then run the command "
                "again",
            )
        if wav_data_shortfall(source) is not None:  # decodes fine, but the end of the phrase is missing
            raise _Undecodable(
                name,
                f"'{name}' is truncated: the file is shorter than its header says",
                "truncated: the file is shorter than its header says",
                "copy the file again from the recorder, or re-record it, then run the command again",
            )
        samples = load_audio(source)
    except AudioError as exc:
        reason = exc.message.replace(f"'{source}'", "it")  # its name already leads the line
        raise _Undecodable(
            name,
            f"could not convert '{name}': {exc.message}",
            reason,
            "replace or remove that file and run the command again (nothing was written)",
        ) from exc
    except OSError as exc:  # unreadable (permissions, a dead link): a file to fix like any other
        raise _Undecodable(
            name,
            f"could not read '{name}': {exc.strerror or exc}",
            f"could not read it: {exc.strerror or exc}",
            "make the file readable, or remove it (and its labels.json entry), then run the command again",
        ) from exc
    if samples.size == 0:
        raise _Undecodable(
            name,
            f"could not convert '{name}': it holds no audio",
            "it holds no audio",
            "re-record it, or remove it (and its labels.json entry) and run the command again",
        )
    return samples


def _check_paths(src: Path, dst: Path) -> None:
    if not src.is_dir():
        what = "is a file, not a folder" if src.exists() else "not found"
        raise ResonanceError(f"source folder '{src}' {what}", "pass the folder that holds the recordings")
    # Same, inside or around SRC: with --force, replacing DST would delete SRC with it.
    refuse_overlap(dst, WHAT, [("source folder", src)])


def _jobs_from_labels(src: Path) -> List[_Job]:
    jobs, names = [], {}
    for utterance in load_labels(src):
        name = utterance.audio.stem + ".wav"
        _claim(names, name, utterance.audio, utterance.rel)
        jobs.append(_Job(utterance.audio, utterance.rel, utterance.text, name))
    return jobs


def _unlabelled(src: Path) -> List[str]:
    referenced = referenced_paths(src, read_labels_json(src))
    root = src.resolve()
    return [
        path.relative_to(src).as_posix()
        for path in _audio_files(src / AUDIO_DIR)
        if root / path.relative_to(src).as_posix() not in referenced
    ]


def _jobs_from_names(src: Path) -> List[_Job]:
    folder = src / AUDIO_DIR if (src / AUDIO_DIR).is_dir() else src
    files = _audio_files(folder)
    if not files:
        raise ResonanceError(
            f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) and no labels.json in '{folder}'",
            "pass the folder that holds the recordings",
        )
    jobs, names, nameless = [], {}, []
    root = src.resolve()
    for path in files:
        rel = path.relative_to(src).as_posix()
        if root not in path.resolve().parents:  # as labels.json entries: a dataset is its folder
            raise ResonanceError(
                f"'{rel}' is a symbolic link to {path.resolve()}, outside the source folder",
                "copy the recording into the folder instead of linking to it (nothing was written)",
            )
        text = text_from_file_name(path.stem)
        if not text:
            nameless.append(rel)
            continue
        _claim(names, path.stem + ".wav", path, rel)
        jobs.append(_Job(path, rel, text, path.stem + ".wav"))
    if nameless:
        raise ResonanceError(
            f"there is no labels.json, and {len(nameless)} file name(s) do not say what is spoken: "
            + ", ".join(nameless[:5])
            + (" …" if len(nameless) > 5 else ""),
            "rename them NNN_<what is said>.wav (e.g. 001_我想喝水.wav), or write a labels.json",
        )
    return jobs


def text_from_file_name(stem: str) -> str:
    """'001_我想喝水' -> '我想喝水'; underscores stand for the spaces `record` replaced."""
    return _NUMBER_PREFIX.sub("", stem).replace("_", " ").strip()


def _audio_files(folder: Path) -> List[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in AUDIO_EXTENSIONS
    )


def _claim(names: Dict[str, Tuple[Path, str]], name: str, source: Path, rel: str) -> None:
    """Two different sources must not become the same output file (a.mp3 and a.wav -> a.wav)."""
    if name in names and names[name][0] != source:
        raise ResonanceError(
            f"'{names[name][1]}' and '{rel}' would both become {AUDIO_DIR}/{name}",
            "rename one of them so their names (without extension) differ",
        )
    names[name] = (source, rel)
