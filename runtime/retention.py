"""Opt-in retention (`resonance serve --retain DIR`): keep each transcribed recording and its result on disk.

Off by default: the server then writes no audio and no transcript anywhere. When the caregiver turns it on,
every successful transcription leaves two files under ``DIR/<patient>/``::

    20260125T093012.345Z-1a2b3c.wav    the audio the model heard: 16 kHz mono 16-bit PCM (also training data)
    20260125T093012.345Z-1a2b3c.json   the result: text, language, duration, endpoint, time ...

Both are private to the server's user (files 0600, folders 0700) and written atomically (temp file in the same
folder, fsync, rename), so a crash or a full disk never leaves half a file under its final name. The JSON is
written last: a ``.json`` file means its ``.wav`` is complete.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from resonance.errors import ResonanceError
from resonance.fsutil import write_bytes_atomic

log = logging.getLogger(__name__)

FILE_MODE = 0o600  # recordings of a patient's voice: readable by the server's user only
DIR_MODE = 0o700


class Retention:
    """Saves (audio, result) pairs under ``root/<patient>/``; counts what it saved and what failed."""

    def __init__(self, root: Path, sample_rate: int = 16000) -> None:
        self.root = Path(root).expanduser().absolute()
        self.sample_rate = sample_rate
        self.saved = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._check_writable()

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

    def save(self, patient: str, audio: np.ndarray, record: Dict[str, Any]) -> str:
        """Write ``audio`` (float32, ``sample_rate``) and ``record`` as JSON; returns the files' common stem.

        ``patient`` must already be a validated id (``models.check_patient_id``): it becomes a folder name.
        """
        folder = self.root / patient
        folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        now = time.time()
        millis = int(now * 1000) % 1000
        stem = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{millis:03d}Z-{secrets.token_hex(3)}"
        _write_private(folder / f"{stem}.wav", _pcm16_wav(audio, self.sample_rate))
        data = dict(record, audio=f"{stem}.wav")
        _write_private(
            folder / f"{stem}.json", (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode()
        )
        with self._lock:
            self.saved += 1
        return stem

    def save_or_log(self, patient: str, audio: np.ndarray, record: Dict[str, Any]) -> None:
        """``save``, but a disk problem must not cost the patient their transcript: log it and count it."""
        try:
            self.save(patient, audio, record)
        except OSError as exc:
            with self._lock:
                self.failed += 1
            log.error("could not keep the recording under %s (--retain): %s", self.root / patient, exc)


def _pcm16_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _write_private(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, mode=FILE_MODE)
