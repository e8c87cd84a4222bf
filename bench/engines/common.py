"""What the engines share: the transcribe signature, the token cap, and Transformers' generate loop."""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import numpy as np

from resonance.constants import SAMPLE_RATE

Transcribe = Callable[[Any], Tuple[str, int]]  # audio -> (text, generated text tokens)


def device(job: Dict[str, Any]) -> str:
    """Where an engine runs: "cpu" (resonance bench) or "cuda" (resonance gpu-check)."""
    return job.get("device", "cpu")


def token_budget(seconds: float) -> int:
    """The same cap for every engine: the runtime's default (anti-loop) budget for this much audio."""
    from resonance.runtime.decoding import DecodingOptions

    return DecodingOptions().token_budget(seconds)


def hf_generate(model, processor, job: Dict[str, Any]) -> Transcribe:
    """Transformers' greedy ``generate`` (PyTorch and Optimum share it): features, then decoding."""
    import torch

    steps = job["fixed_steps"]
    eot = processor.tokenizer.eos_token_id  # every special token id is >= eot: the rest are text tokens
    fixed = {}
    if steps:
        # exactly `steps` text tokens: EOT masked until then, and every special id above it masked as the
        # runtime always does (random weights' argmax is often a timestamp, which engines treat differently)
        stock = list(model.generation_config.suppress_tokens or [])
        fixed = {
            "min_new_tokens": steps,
            "suppress_tokens": stock + list(range(eot + 1, model.config.vocab_size)),
        }

    def run(audio: np.ndarray) -> Tuple[str, int]:
        features = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        budget = steps or token_budget(audio.size / SAMPLE_RATE)
        inputs = features.input_features
        if isinstance(model, torch.nn.Module):  # PyTorch (not Optimum): on the model's device and dtype
            inputs = inputs.to(model.device, model.dtype)
        with torch.inference_mode():
            ids = model.generate(
                input_features=inputs,
                language=job["language"],
                task="transcribe",
                do_sample=False,
                num_beams=1,
                max_new_tokens=budget,
                **fixed,
            )
        text = processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
        return text, int((ids[0] < eot).sum())

    return run
