"""A randomly initialised Whisper with the real vocabulary: for fast tests (``tiny``) and latency benchmarks
(``base``/``small``, the real shapes: `resonance bench --model-size small`). Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from resonance.errors import ResonanceError
from resonance.fsutil import atomic_directory
from resonance.train.whisper_folder import WhisperTokens, save_whisper_folder, whisper_config

# Shapes of the random models (tiny: fast tests; base/small: the real architectures, for latency benchmarks).
RANDOM_SIZES: Dict[str, Dict[str, int]] = {
    "tiny": {"d_model": 64, "layers": 2, "heads": 2, "ffn": 128},
    "base": {"d_model": 512, "layers": 6, "heads": 8, "ffn": 2048},
    "small": {"d_model": 768, "layers": 12, "heads": 12, "ffn": 3072},
}


def save_random_whisper(out: Path, tokenizer_file: Path, size: str = "tiny", seed: int = 0) -> Path:
    """A randomly initialised Whisper with the real vocabulary and the same files as an import.

    ``tiny`` (d_model 64, 2+2 layers) is for fast tests; ``base`` and ``small`` have the real shapes, for
    latency benchmarks. Nothing is downloaded.
    """
    if size not in RANDOM_SIZES:
        raise ResonanceError(f"unknown model size '{size}'.", f"choose one of {', '.join(RANDOM_SIZES)}")
    import torch
    from transformers import WhisperForConditionalGeneration

    tokens = WhisperTokens.from_tokenizer_file(Path(tokenizer_file))
    dims = RANDOM_SIZES[size]
    shape = {
        "vocab_size": 51865,  # the multilingual vocabulary (50258 BPE + special + 1501 timestamp tokens)
        "d_model": dims["d_model"],
        "encoder_layers": dims["layers"],
        "decoder_layers": dims["layers"],
        "encoder_attention_heads": dims["heads"],
        "decoder_attention_heads": dims["heads"],
        "encoder_ffn_dim": dims["ffn"],
        "decoder_ffn_dim": dims["ffn"],
    }
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(whisper_config(tokens, **shape))
    with atomic_directory(Path(out), False, "random Whisper model") as tmp:
        provenance = {"source": f"random:{size}", "seed": seed}
        save_whisper_folder(tmp, model, Path(tokenizer_file), tokens, {}, provenance)
    return Path(out)
