"""Dynamic audio context: an encoder that takes fewer mel frames than its window and slices its positions.

Whisper's encoder adds one positional embedding per output position and checks that the input has exactly
the window's frames. Here the positions are cut to the length the convolutions actually produce, so a 2 s
clip can be encoded as 2 s (rounded up to a bucket by the runtime) instead of a zero-padded 5 s or 30 s window:
the encoder's cost is linear-to-quadratic in that length.

Caveat, measured in the tests: on a full-length input the result is identical to the fixed export; on a
shorter input it is *not* the padded window's result (the attention no longer sees the padding), which stock
Whisper was never trained on. Only use it for models trained so (`audio.dynamic_window` in the manifest).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator


def _sliced_embedding(embedding):
    """A module standing in for ``encoder.embed_positions``: the first ``length`` position vectors."""
    import torch

    class SlicedPositions(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = embedding.weight
            self.num_embeddings = embedding.num_embeddings  # the encoder builds arange(num_embeddings)
            self.length = None  # set by a hook on conv2 to its output length before every use

        def forward(self, positions):
            # `positions` is always arange(window); the real length is conv2's output length, traced as a
            # dynamic Shape op in the ONNX graph.
            return self.weight[: self.length]

    return SlicedPositions()


@contextlib.contextmanager
def sliced_positions(model) -> Iterator[None]:
    """Within the block, ``model``'s encoder accepts any even number of mel frames up to its window."""
    encoder = model.get_encoder()
    original = encoder.embed_positions
    sliced = _sliced_embedding(original)
    hook = encoder.conv2.register_forward_hook(lambda _m, _i, out: setattr(sliced, "length", out.shape[-1]))
    class_forward = encoder.forward
    config = encoder.config

    def forward(input_features, *args, **kwargs):
        # The encoder insists on config.max_source_positions * 2 frames: make it agree with this input.
        saved = config.max_source_positions
        config.max_source_positions = input_features.shape[-1] // 2
        try:
            return class_forward(input_features, *args, **kwargs)
        finally:
            config.max_source_positions = saved

    encoder.embed_positions = sliced
    encoder.forward = forward
    try:
        yield
    finally:
        hook.remove()
        encoder.embed_positions = original
        del encoder.forward  # back to the class's forward


def onnx_configs(model) -> Dict[str, object]:
    """Optimum configs for encoder + decoders where the encoder's frame axis is dynamic."""
    from optimum.exporters.onnx.base import ConfigBehavior
    from optimum.exporters.onnx.model_configs import WhisperOnnxConfig

    class DynamicWindowWhisperOnnxConfig(WhisperOnnxConfig):
        @property
        def inputs(self):
            inputs = super().inputs
            if self._behavior is ConfigBehavior.ENCODER:
                inputs["input_features"] = {0: "batch_size", 2: "feature_sequence_length"}
            return inputs

        @property
        def outputs(self):
            outputs = super().outputs
            if self._behavior is ConfigBehavior.ENCODER:
                outputs["last_hidden_state"] = {0: "batch_size", 1: "encoder_sequence_length"}
            return outputs

    config = DynamicWindowWhisperOnnxConfig(model.config, task="automatic-speech-recognition", use_past=True)
    return {
        "encoder_model": config.with_behavior("encoder"),
        "decoder_model": config.with_behavior("decoder", use_past=True, use_past_in_inputs=False),
        "decoder_with_past_model": config.with_behavior("decoder", use_past=True, use_past_in_inputs=True),
    }
