"""Corrections kept as training data (`resonance serve --collect DIR`, off by default).

When the caregiver confirms a result on the page (✓) or corrects it (✗, then a phrase or typed text), the
recording and the right text are added to that patient's dataset, in the standard data format::

    DIR/<patient>/audio/0001_我想喝水.wav     16 kHz mono 16-bit PCM, silence at the edges trimmed
    DIR/<patient>/labels.json                [{"audio": "audio/0001_我想喝水.wav", "text": "我想喝水"}, ...]

so `resonance data check DIR/<patient>` passes on it and the next training round reads it as it is. Files are
written atomically and never over an existing one (a new number instead); labels.json keeps every entry it
had (unknown keys too) and gains one; a recording is removed again if its entry could not be written. Silent,
too short, too long or badly clipped clips are refused, as `data check` would flag them. A disk quota caps
the folder. Everything is private to the server's user (files 0600, folders 0700).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from resonance.constants import COLLECT_QUOTA_MB, SAMPLE_RATE
from resonance.data.labels import AUDIO_DIR, LABELS_FILE, read_labels_json
from resonance.data.quality import level_findings, measure, trim_silence
from resonance.data.record import safe_file_name
from resonance.errors import ResonanceError
from resonance.fsutil import write_bytes_atomic, write_bytes_new
from resonance.text import strip_invisible

FILE_MODE = 0o600  # a patient's voice: readable by the server's user only
DIR_MODE = 0o700
MAX_TEXT_CHARS = 100  # a phrase, not a paragraph (the page's phrases are a few words)
MIN_FREE_MB = 200.0  # keep this much of the disk free for the system, whatever the quota says
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NUMBERED = re.compile(r"(\d+)")


class InvalidCorrection(ResonanceError):
    """The text of a correction cannot be a label (empty, too long, control characters): HTTP 400."""


class ClipNotKept(ResonanceError):
    """A recording `data check` would reject (silent, too short ...): HTTP 422, nothing written."""


class CollectionFull(ResonanceError):
    """The quota or the disk is full: HTTP 507, nothing written."""


class CollectionDamaged(ResonanceError):
    """The patient's labels.json cannot be read as a list: HTTP 409 until someone fixes it."""


def check_text(text: Any) -> str:
    """The label a correction gives, stripped (of invisible characters too); InvalidCorrection when it cannot
    be one."""
    # A zero-width space pasted in with the phrase would make it a label of its own beside the real one.
    text = strip_invisible(text) if isinstance(text, str) else ""
    if not text:
        raise InvalidCorrection(
            "the correction has no text", "send the right phrase in the form field 'text' (what was said)"
        )
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidCorrection(
            f"the text is {len(text)} characters long; a label has at most {MAX_TEXT_CHARS}",
            "send the phrase that was said, a few words",
        )
    if _CONTROL.search(text):
        raise InvalidCorrection("the text holds control characters or line breaks", "send one line of text")
    return text


class Collector:
    """Adds (recording, text) pairs to ``root/<patient>/`` as a dataset; thread-safe; counts what it kept."""

    def __init__(self, root: Path, quota_mb: float = COLLECT_QUOTA_MB) -> None:
        if not quota_mb > 0:
            raise ResonanceError(
                f"--collect-quota-mb {quota_mb:g} must be above 0", f"e.g. {COLLECT_QUOTA_MB:g}"
            )
        self.root = Path(root).expanduser().absolute()
        self.quota_bytes = int(quota_mb * 1024 * 1024)
        self.kept = 0
        self._lock = threading.Lock()
        self._check_writable()
        self._used = _folder_bytes(self.root)

    def _check_writable(self) -> None:
        """Fail at start, not at the caregiver's first ✓, when the folder cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            probe = self.root / ".write-test"
            write_bytes_atomic(probe, b"", mode=FILE_MODE)
            probe.unlink()
        except OSError as exc:
            raise ResonanceError(
                f"cannot write corrections to --collect folder {self.root}: {exc.strerror or exc}",
                "pick a folder the server's user can write, or leave out --collect",
            ) from exc

    @property
    def used_mb(self) -> float:
        return self._used / (1024 * 1024)

    def add(self, patient: str, audio: np.ndarray, text: str) -> Dict[str, Any]:
        """Keep ``audio`` (float32, 16 kHz) as a recording of ``text`` by ``patient`` (an already checked id).

        Returns the new labels.json entry plus ``count`` (the patient's entries now) and ``seconds`` kept.
        """
        text = check_text(text)
        take = trim_silence(np.asarray(audio, dtype=np.float32).reshape(-1), SAMPLE_RATE)
        problems = [f for f in level_findings(measure(take, SAMPLE_RATE)) if f.severity == "error"]
        if take.size == 0:
            raise ClipNotKept(
                "not kept: the recording is silent", "record the phrase again, closer to the speaker"
            )
        if problems:
            raise ClipNotKept(f"not kept: {problems[0].message}", problems[0].fix)
        data = _pcm16_wav(take)
        folder = self.root / patient
        with self._lock:
            self._check_space(len(data))
            entries = self._entries(folder)
            name = self._write_recording(folder / AUDIO_DIR, text, data)
            entry = {"audio": f"{AUDIO_DIR}/{name}", "text": text}
            try:
                labels = (_dumps([*entries, entry])).encode("utf-8")
                write_bytes_atomic(folder / LABELS_FILE, labels, mode=FILE_MODE)
            except BaseException:
                (folder / AUDIO_DIR / name).unlink()  # ours, a moment old: no recording without its label
                raise
            self._used += len(data) + len(labels)
            self.kept += 1
        return {**entry, "count": len(entries) + 1, "seconds": round(take.size / SAMPLE_RATE, 2)}

    def _check_space(self, size: int) -> None:
        if self._used + size > self.quota_bytes:
            raise CollectionFull(
                f"the --collect folder {self.root} is full ({self.used_mb:.0f} MB of its "
                f"{self.quota_bytes / 1048576:g} MB quota)",
                "train on what was collected and move it away, or raise --collect-quota-mb",
            )
        free_mb = shutil.disk_usage(self.root).free / (1024 * 1024)
        if free_mb - size / (1024 * 1024) < MIN_FREE_MB:
            raise CollectionFull(
                f"the disk of {self.root} has only {free_mb:.0f} MB free", "free some space on the server"
            )

    def _entries(self, folder: Path) -> List[Any]:
        """The patient's labels.json as it is (every entry and key kept), or [] for a new patient."""
        if not (folder / LABELS_FILE).exists():
            folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            return []
        try:
            entries = read_labels_json(folder)
        except ResonanceError as exc:
            raise CollectionDamaged(exc.message, exc.hint) from exc
        if not isinstance(entries, list):
            raise CollectionDamaged(
                f"{folder / LABELS_FILE} is not a list of entries",
                f"fix it (`resonance data check {folder}` says how); nothing is added until then",
            )
        return entries

    def _write_recording(self, audio_dir: Path, text: str, data: bytes) -> str:
        """Write ``data`` as audio/NNNN_<text>.wav under a number no file in the folder uses yet."""
        audio_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        stem = safe_file_name(text)
        number = 1 + max(
            (int(m.group(1)) for p in audio_dir.iterdir() if (m := _NUMBERED.match(p.name))), default=0
        )
        while True:
            name = f"{number:04d}_{stem}.wav" if stem else f"{number:04d}.wav"
            try:
                write_bytes_new(audio_dir / name, data, mode=FILE_MODE)
                return name
            except FileExistsError:  # someone else's file (another server, a copy): never over it
                number += 1


def _folder_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while we counted
                continue
    return total


def _pcm16_wav(audio: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _dumps(entries: List[Any]) -> str:
    import json

    return json.dumps(entries, ensure_ascii=False, indent=2) + "\n"
