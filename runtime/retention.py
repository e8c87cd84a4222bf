"""Opt-in retention (`resonance serve --retain DIR`): keep each transcribed recording and its result on disk.

Off by default: the server then writes no audio and no transcript anywhere. When the caregiver turns it on,
every successful transcription leaves two files under ``DIR/<patient>/``::

    20260125T093012.345Z-1a2b3c.wav    the audio the model heard: 16 kHz mono 16-bit PCM (also training data)
    20260125T093012.345Z-1a2b3c.json   the result: text, language, duration, endpoint, time ...

Both are private to the server's user (files 0600, folders 0700) and written atomically (temp file in the same
folder, fsync, rename), so a crash or a full disk never leaves half a file under its final name. The JSON is
written last: a ``.json`` file means its ``.wav`` is complete.

Two things are not kept: silent clips (a tap on the button, a muted microphone: ``audio.is_silent``), and
anything once the folder holds ``max_mb`` (``serve --retain-max-mb``, default 1024 MB, ~30 hours of
16 kHz audio): the server keeps transcribing and says so once in its log. The caregiver decides what to delete.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from resonance.audio import is_silent
from resonance.errors import ResonanceError
from resonance.fsutil import write_bytes_atomic

log = logging.getLogger(__name__)

FILE_MODE = 0o600  # recordings of a patient's voice: readable by the server's user only
DIR_MODE = 0o700


DEFAULT_MAX_MB = 1024.0  # --retain-max-mb: ~30 hours of 16 kHz 16-bit mono


class Retention:
    """Saves (audio, result) pairs under ``root/<patient>/`` within ``max_mb``; counts what it saved, what
    it skipped (silent, over the quota) and what failed."""

    def __init__(self, root: Path, sample_rate: int = 16000, max_mb: float = DEFAULT_MAX_MB) -> None:
        self.root = Path(root).expanduser().absolute()
        self.sample_rate = sample_rate
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.saved = 0
        self.failed = 0
        self.skipped_silent = 0
        self.skipped_full = 0
        self._lock = threading.Lock()
        self._check_writable()
        self.used_bytes = _bytes_under(self.root)

    def _check_writable(self) -> None:
        """Fail at start, not at the first request, when the folder cannot be written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            _write_private(self.root / ".write-test", b"")
            (self.root / ".write-test").unlink()
        except OSError as exc:
            raise ResonanceError(
                f"cannot write recordings to --retain folder {self.root}: {exc.strerror or exc}",
                "pick a folder the server's user can write, or leave out --retain",
            ) from exc

    def save(
        self, patient: str, audio: np.ndarray, record: Dict[str, Any], wav: Optional[bytes] = None
    ) -> str:
        """Write ``audio`` (float32, ``sample_rate``) and ``record`` as JSON; returns the files' common stem.

        ``patient`` must already be a validated id (``models.check_patient_id``): it becomes a folder name.
        """
        folder = self.root / patient
        folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        now = time.time()
        millis = int(now * 1000) % 1000
        stem = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{millis:03d}Z-{secrets.token_hex(3)}"
        wav = _pcm16_wav(audio, self.sample_rate) if wav is None else wav
        _write_private(folder / f"{stem}.wav", wav)
        data = dict(record, audio=f"{stem}.wav")
        text = (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode()
        _write_private(folder / f"{stem}.json", text)
        with self._lock:
            self.saved += 1
            self.used_bytes += len(wav) + len(text)
        return stem

    def save_or_log(self, patient: str, audio: np.ndarray, record: Dict[str, Any]) -> None:
        """``save`` what is worth keeping and fits the quota; a disk problem must not cost the patient their
        transcript: log it and count it."""
        if is_silent(audio, self.sample_rate):
            with self._lock:
                self.skipped_silent += 1
            log.debug("not keeping a silent recording of %s", patient)
            return
        wav = _pcm16_wav(audio, self.sample_rate)
        with self._lock:
            full = self.used_bytes + len(wav) > self.max_bytes
            if full:
                self.skipped_full += 1
                first = self.skipped_full == 1
        if full:
            if first:  # once: the log must not fill the disk the quota protects
                log.warning(
                    "--retain folder %s holds its quota of %d MB: new recordings are not kept "
                    "(move or delete some, or raise --retain-max-mb)",
                    self.root,
                    self.max_bytes // (1024 * 1024),
                )
            return
        try:
            self.save(patient, audio, record, wav=wav)
        except OSError as exc:
            with self._lock:
                self.failed += 1
            log.error("could not keep the recording under %s (--retain): %s", self.root / patient, exc)


def _pcm16_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _bytes_under(root: Path) -> int:
    """What the retention folder holds already (recordings kept by earlier runs count against the quota)."""
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file() and not path.is_symlink())


def _write_private(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, mode=FILE_MODE)
