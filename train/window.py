"""The encoder's audio window as a property of the model.

Whisper always encodes 30 s (1500 positions). Short phrases fit in 5 s: slicing the encoder's positional
embeddings to the first N positions gives a model that natively takes N*2 mel frames, ~6x less encoder work.
A model must be *trained* with the window it is served with (stock Whisper can collapse on a shortened
window), so train_config.json records it and export applies the same cut before merging the adapter.
"""

from __future__ import annotations

import math

POSITIONS_PER_SECOND = 50  # the encoder's two convolutions halve the frame rate (conv2 stride 2)


def window_of(model) -> float:
    return model.config.max_source_positions / POSITIONS_PER_SECOND


def shorten_audio_window(model, seconds: float):
    """Cut a WhisperForConditionalGeneration's encoder window to ``seconds`` (in place; returns the model)."""
    import torch

    positions = round(seconds * POSITIONS_PER_SECOND)
    encoder = model.get_encoder()
    current = encoder.embed_positions.weight.shape[0]
    if positions > current:
        raise ValueError(f"cannot lengthen the window from {current} to {positions} positions")
    if positions == current:
        return model
    old = encoder.embed_positions
    new = torch.nn.Embedding(positions, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[:positions])
    new.requires_grad_(False)  # Whisper's sinusoidal positions are never trained
    encoder.embed_positions = new
    encoder.max_source_positions = positions
    encoder.config.max_source_positions = positions
    model.config.max_source_positions = positions
    return model


def choose_window(longest_clip_seconds: float, choices=(5.0, 10.0, 15.0, 30.0), margin: float = 0.5) -> float:
    """Smallest window that holds the longest clip plus a margin (so no training clip is cut)."""
    for seconds in choices:
        if longest_clip_seconds + margin <= seconds:
            return seconds
    return choices[-1] if longest_clip_seconds <= choices[-1] else math.inf
