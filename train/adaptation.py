"""What training changes in Whisper, and how an adapter folder is applied to a base model again.

Two ways (``TrainConfig.finetune``), each on the encoder, the decoder or both (``TrainConfig.adapt``):
- ``lora``: peft LoRA matrices beside the frozen base weights; the folder is a standard peft adapter
  (adapter_config.json + adapter_model.safetensors).
- ``full``: the base weights of the chosen half are trained themselves. The folder then holds only those
  trained tensors (FULL_WEIGHTS, safetensors, names as in WhisperForConditionalGeneration): applied to the base
  model named in train_config.json they give the trained model; the untouched half comes from the base.

Everything here is torch-side (train and export), never the runtime.
"""

from __future__ import annotations

import re
from pathlib import Path

from resonance.errors import ResonanceError
from resonance.train.config import TrainConfig

FULL_WEIGHTS = "finetuned_weights.safetensors"  # the trained tensors of a --finetune full run
LORA_CONFIG = "adapter_config.json"
# Parameter-name prefixes of the two halves in WhisperForConditionalGeneration. proj_out is tied to the
# decoder's token embeddings, so it trains with the decoder and is not listed apart.
HALVES = {"encoder": ("model.encoder.",), "decoder": ("model.decoder.",), "both": ("model.",)}
# Whisper's encoder positions are fixed sinusoids (and cut to the window): never trained.
FROZEN_ALWAYS = ("model.encoder.embed_positions.",)


def is_adapter_folder(folder: Path) -> bool:
    return (folder / LORA_CONFIG).is_file() or (folder / FULL_WEIGHTS).is_file()


def check_adapter_folder(folder: Path) -> None:
    """An adapter folder, or one error saying what the path is instead (missing, a file, a bundle …)."""
    folder = Path(folder)
    hint = "pass the folder that `resonance train --out` created, e.g. --adapter adapters/grandpa"
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not a folder"
        raise ResonanceError(f"adapter folder '{folder}' {what}", hint)
    if (folder / "manifest.json").is_file():  # the bundle's contract file (runtime/bundle.py MANIFEST)
        raise ResonanceError(f"'{folder}' is a bundle (made by `resonance export`), not an adapter", hint)
    if not is_adapter_folder(folder):
        raise ResonanceError(
            f"'{folder}' is not an adapter folder (no {LORA_CONFIG} or {FULL_WEIGHTS})", hint
        )


def make_trainable(model, config: TrainConfig):
    """``model`` ready to train as ``config`` says: a peft model (LoRA) or the model with only the chosen
    half's weights requiring gradients (full)."""
    if config.finetune == "full":
        prefixes = HALVES[config.adapt]
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(prefixes) and not name.startswith(FROZEN_ALWAYS))
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(config))


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    options = {}
    if config.adapt == "both":
        # A plain list of module names, as adapters were always written (peft matches any module so named).
        targets = list(config.target_modules)
    else:
        # A regex peft matches against the full module name, e.g. model.encoder.layers.3.self_attn.q_proj.
        names = "|".join(re.escape(t) for t in config.target_modules)
        targets = rf"model\.{config.adapt}\.layers\.\d+\.(.*\.)?({names})"
    if config.decoder_lora_r is not None:
        # Same scale alpha/r as the encoder's LoRA: only the capacity of the decoder's update shrinks.
        options["rank_pattern"] = {r"model\.decoder\..*": config.decoder_lora_r}
        options["alpha_pattern"] = {
            r"model\.decoder\..*": config.lora_alpha * config.decoder_lora_r / config.lora_r
        }
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        **options,
    )


def trained_state(model, config: TrainConfig) -> dict:
    """The trained tensors only (what a checkpoint and the adapter folder keep), as CPU copies."""
    if config.finetune == "full":
        # named_parameters lists a tied tensor once (decoder.embed_tokens, not proj_out): saved once.
        state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    else:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def load_trained_state(model, state: dict, config: TrainConfig) -> None:
    if config.finetune == "full":
        _load_full(model, state, source="the checkpoint")
    else:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)


def warm_start(model, folder: Path, config: TrainConfig) -> None:
    """Load the trained tensors of an earlier adapter of this patient into ``model`` (made trainable with the
    same recipe): training goes on from there instead of from the base model (``resonance update``)."""
    check_adapter_folder(folder)
    hint = "warm-start only from an adapter trained with the same --finetune, --adapt and LoRA options"
    if config.finetune == "full":
        from safetensors.torch import load_file

        if not (folder / FULL_WEIGHTS).is_file():
            raise ResonanceError(f"'{folder}' is a LoRA adapter, not a full fine-tune", hint)
        _load_full(model, load_file(str(folder / FULL_WEIGHTS)), source=str(folder))
        return
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    if not (folder / LORA_CONFIG).is_file():
        raise ResonanceError(f"'{folder}' holds a full fine-tune, not a LoRA adapter", hint)
    try:
        result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"))
    except RuntimeError as exc:  # a tensor of another shape (another rank)
        raise ResonanceError(f"the adapter '{folder}' does not fit this recipe: {exc}", hint) from exc
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:  # LoRA on modules this recipe does not adapt
        raise ResonanceError(
            f"the adapter '{folder}' has {len(unexpected)} tensors this recipe does not train, "
            f"e.g. {unexpected[0]}",
            hint,
        )


def save(model, folder: Path, config: TrainConfig) -> None:
    if config.finetune == "full":
        from safetensors.torch import save_file

        save_file(trained_state(model, config), str(folder / FULL_WEIGHTS), metadata={"format": "pt"})
    else:
        model.save_pretrained(folder)


def apply_adapter(model, folder: Path, merge: bool = True):
    """The base ``model`` (already cut to the adapter's window) with the adapter folder applied.

    LoRA: a peft model, or with ``merge`` the LoRA folded into the weights (a plain Whisper, as fast as the
    base). Full fine-tuning: the trained tensors replace the base's, always a plain Whisper.
    """
    check_adapter_folder(folder)
    if (folder / FULL_WEIGHTS).is_file():
        from safetensors.torch import load_file

        _load_full(model, load_file(str(folder / FULL_WEIGHTS)), source=str(folder / FULL_WEIGHTS))
        return model
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(folder))
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise ResonanceError(
            f"cannot apply adapter '{folder}' to this base model: {exc}",
            "use the base model the adapter was trained on (--base-model, see its train_config.json)",
        ) from exc
    return peft_model.merge_and_unload() if merge else peft_model


def _load_full(model, state: dict, source: str) -> None:
    import torch

    own = dict(model.named_parameters())
    unknown = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
    if unknown or mismatched:
        raise ResonanceError(
            f"{source} does not fit this base model: "
            + ", ".join(
                f"{k} ({'unknown' if k in unknown else 'other shape'})" for k in (unknown + mismatched)[:3]
            ),
            "use the base model the adapter was trained on (--base-model, see its train_config.json)",
        )
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor.to(device=own[name].device, dtype=own[name].dtype))
