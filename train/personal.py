"""Load a trained patient adapter in Python (evaluation, notebooks, your own scripts).

An adapter is a standard peft folder (or, after --finetune full, the trained tensors: train/adaptation.py),
but it was trained on an encoder cut to a short audio window (train/window.py), so the stock base model must
get the same cut before the adapter is applied; the processor saved with the adapter already makes features
of that length. This does both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from resonance.constants import DEFAULT_BASE_MODEL
from resonance.fsutil import read_json_file
from resonance.train.config import TRAIN_CONFIG_FILE


def load_personal_model(
    adapter: Union[str, Path], base_model: Optional[str] = None, merge: bool = False, device: str = "cpu"
):
    """(model in eval mode, WhisperProcessor) for an adapter made by `resonance train`.

    ``base_model``: default the one in the adapter's train_config.json. ``merge``: fold the LoRA weights into
    the base (a plain WhisperForConditionalGeneration, as export does) instead of a peft model; a fully
    fine-tuned adapter always gives the plain model.
    """
    from transformers import WhisperProcessor

    from resonance.train.adaptation import apply_adapter, check_adapter_folder
    from resonance.train.base_model import load_whisper
    from resonance.train.window import shorten_audio_window, window_of

    adapter = Path(adapter)
    check_adapter_folder(adapter)
    made_with = _train_config(adapter)
    _, model = load_whisper(base_model or made_with.get("base_model") or DEFAULT_BASE_MODEL, device)
    window = made_with.get("window_seconds")
    if window and window < window_of(model):
        shorten_audio_window(model, float(window))
    model = apply_adapter(model, adapter, merge=merge)
    return model.to(device).eval(), WhisperProcessor.from_pretrained(str(adapter))


def _train_config(adapter: Path) -> dict:
    path = adapter / TRAIN_CONFIG_FILE
    if not path.is_file():
        return {}
    made_with = read_json_file(
        path, "adapter file", "train the adapter again, or restore the file from a copy"
    )
    return made_with if isinstance(made_with, dict) else {}
