"""The ONNX decoder graph: Optimum's merged Whisper decoder (one graph, KV cache) and how its steps are run.

The merged ``decoder.onnx`` has a boolean input ``use_cache_branch``: the first step (:meth:`MergedDecoder.prime`)
runs the whole SOT sequence with empty past tensors (shape [B, heads, 0, head_dim]) and
``use_cache_branch=False``; every later step (:meth:`MergedDecoder.cached_step`) feeds the previous step's
``present.*`` outputs back as ``past_key_values.*`` with ``use_cache_branch=True`` and only the new tokens.
Input/output names are read from the session, so any layer count works.

This module knows the graph, not the search: greedy and beam search (runtime/decoding.py) and phrase scoring
(runtime/phrases.py) all drive it through ``prime`` and ``cached_step``. A :class:`StepRunner` runs one step
on the host (numpy) or with the cache kept on the GPU (IOBinding).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import numpy as np

from resonance.errors import ResonanceError
from resonance.runtime.bundle import ModelSpec, TokenSpec
from resonance.runtime.sessions import numpy_dtype


def to_host(value: Any) -> np.ndarray:
    """A numpy array from a numpy array or an onnxruntime OrtValue (IOBinding keeps outputs on the device)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


class Step(NamedTuple):
    """One decoder call's outputs: logits [batch, new tokens, vocab] (numpy) and the presents, already named as
    the next step's ``past_key_values.*`` inputs (numpy arrays, or OrtValues on the GPU)."""

    logits: Any
    presents: Dict[str, Any]

    @property
    def cross_attention(self) -> Dict[str, Any]:
        """The audio's cross-attention keys/values: computed once, in the first step. In the cache branch
        Optimum's graph returns empty placeholders for them, so they are always taken from the first step."""
        return {name: value for name, value in self.presents.items() if ".encoder." in name}

    @property
    def self_attention(self) -> Dict[str, Any]:
        """The tokens' self-attention cache: it grows by the new tokens at every step."""
        return {name: value for name, value in self.presents.items() if ".encoder." not in name}


class StepRunner:
    """Runs one decoder step: feeds -> :class:`Step` (logits on the host, presents renamed as next pasts)."""

    def step(self, feeds: Dict[str, Any], present_to_past: Dict[str, str]) -> Step:
        raise NotImplementedError


class NumpyStepRunner(StepRunner):
    """CPU path: numpy in, numpy out (the KV cache is host memory anyway)."""

    def __init__(self, session) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]

    def step(self, feeds: Dict[str, Any], present_to_past: Dict[str, str]) -> Step:
        values = self.session.run(self.output_names, feeds)
        out = dict(zip(self.output_names, values))
        presents = {present_to_past[n]: v for n, v in out.items() if n in present_to_past}
        return Step(out["logits"], presents)


class IOBindingStepRunner(StepRunner):
    """CUDA path: the KV cache and encoder states stay on the GPU as OrtValues between steps.

    Without IOBinding every step would copy all past tensors to the host and back (for whisper-small at 50
    tokens that is tens of MB per step); only the logits (vocab floats) come to the host here, for the argmax.
    Inputs that are numpy arrays (input_ids, use_cache_branch, the empty first-step pasts) are bound from host
    memory; OrtValues (encoder states, presents) are bound where they live.
    """

    def __init__(self, session, device: str = "cuda", device_id: int = 0) -> None:
        self.session = session
        self.device = device
        self.device_id = device_id
        self.output_names = [o.name for o in session.get_outputs()]

    def step(self, feeds: Dict[str, Any], present_to_past: Dict[str, str]) -> Step:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            if name == "logits":
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        out = dict(zip(self.output_names, values))
        presents = {present_to_past[n]: v for n, v in out.items() if n in present_to_past}
        return Step(out["logits"].numpy(), presents)


class MergedDecoder:
    """The merged decoder session with the bundle's tokens: the first step, the cached step, P(no speech).

    Stateless between calls (every call's cache is passed in and returned): safe to share across threads.
    """

    def __init__(self, session, tokens: TokenSpec, model: ModelSpec) -> None:
        self.session = session
        self.tokens = tokens
        self.vocab_size = model.vocab_size
        input_names = [i.name for i in session.get_inputs()]
        output_names = [o.name for o in session.get_outputs()]
        for required in ("input_ids", "encoder_hidden_states", "use_cache_branch", "logits"):
            if required not in input_names + output_names:
                raise ResonanceError(
                    f"decoder.onnx has no '{required}': not an Optimum merged Whisper decoder",
                    "re-export the bundle with `resonance export`",
                )
        past_names = [n for n in input_names if n.startswith("past_key_values.")]
        # present.3.decoder.key (output) -> past_key_values.3.decoder.key (input of the next step)
        self.present_to_past = {
            n: "past_key_values." + n[len("present.") :] for n in output_names if n.startswith("present.")
        }
        missing = set(past_names) - set(self.present_to_past.values())
        if missing:
            raise ResonanceError(
                f"decoder.onnx has no present output for {sorted(missing)}", "re-export the bundle"
            )
        self.empty_past = {
            i.name: _empty_past(i, model) for i in session.get_inputs() if i.name in past_names
        }
        # Tokens a window may generate after the SOT sequence before the decoder's positions run out.
        self.max_new_positions = model.max_target_positions - len(tokens.sot_sequence)

    def numpy_runner(self) -> NumpyStepRunner:
        return NumpyStepRunner(self.session)

    def prime(self, encoder_hidden_states, runner: Optional[StepRunner] = None) -> Step:
        """The first step: the SOT sequence with empty pasts -> logits [1, len(sot), vocab] and presents.

        The presents hold the prompt's self-attention cache and the audio's cross-attention keys/values.
        """
        runner = runner or self.numpy_runner()
        feeds: Dict[str, Any] = dict(self.empty_past)
        feeds["input_ids"] = np.asarray([list(self.tokens.sot_sequence)], dtype=np.int64)
        feeds["encoder_hidden_states"] = encoder_hidden_states
        feeds["use_cache_branch"] = np.asarray([False])
        return runner.step(feeds, self.present_to_past)

    def cached_step(
        self, runner: StepRunner, past: Dict[str, Any], input_ids: np.ndarray, encoder_hidden_states
    ) -> Step:
        """A step of the cache branch: ``past`` (self- and cross-attention caches) + ``input_ids`` (batch, new
        tokens) -> logits and presents. The graph reads the audio only through the cross-attention cache here;
        ``encoder_hidden_states`` is still one of its inputs."""
        feeds = dict(past)
        feeds["input_ids"] = input_ids
        feeds["encoder_hidden_states"] = encoder_hidden_states
        feeds["use_cache_branch"] = np.asarray([True])
        return runner.step(feeds, self.present_to_past)

    def no_speech_prob(self, primed: Step) -> float:
        """P(<|nocaptions|>) at the SOT position of the first step (openai/whisper: softmax of those logits)."""
        if self.tokens.no_speech is None:
            return 0.0
        x = np.asarray(primed.logits[0, 0], dtype=np.float64)
        x = np.exp(x - x.max())
        return float(x[self.tokens.no_speech] / x.sum())


def _empty_past(arg, model: ModelSpec) -> np.ndarray:
    """A [1, heads, 0, head_dim] past of the input's dtype (dynamic dimensions taken from the manifest)."""
    heads, head_dim = arg.shape[1], arg.shape[3]
    if not isinstance(heads, int):
        heads = model.decoder_attention_heads
    if not isinstance(head_dim, int):
        head_dim = model.d_model // model.decoder_attention_heads
    return np.zeros((1, heads, 0, head_dim), dtype=numpy_dtype(arg.type))
