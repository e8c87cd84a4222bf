"""Greedy Whisper decoding over Optimum's merged decoder (one graph, KV cache), with Whisper's token rules.

The merged ``decoder.onnx`` has a boolean input ``use_cache_branch``: the first step runs the whole SOT sequence
with empty past tensors (shape [B, heads, 0, head_dim]) and ``use_cache_branch=False``; every later step feeds
the previous step's ``present.*`` outputs back as ``past_key_values.*`` with ``use_cache_branch=True`` and only
the newest token. Input/output names are read from the session, so any layer count works.

Token rules follow openai/whisper ``decoding.py``: the language and task are forced by the SOT sequence;
``suppress`` tokens are masked at every step, and so is every special token above ``eot`` (other languages,
tasks, <|nocaptions|>, timestamps: we decode without timestamps, so none of them is ever valid output);
``begin_suppress`` (blank, eot) is masked at the first generated step so the model cannot return nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from resonance.errors import ResonanceError, reject_unknown_fields
from resonance.runtime.bundle import ModelSpec, TokenSpec
from resonance.runtime.sessions import numpy_dtype


@dataclass(frozen=True)
class DecodingOptions:
    # Hard cap on generated tokens per audio window (Whisper's own limit is 224 = max_target_positions / 2).
    max_new_tokens: int = 128
    # Anti-loop guard: the cap also scales with the audio, tokens_per_second * seconds + length_slack tokens.
    # Slow dysarthric speech is 1-3 characters a second and a Chinese character is 1-3 tokens, so a 2 s phrase
    # never needs 100 tokens; a model stuck in a loop is cut off early. None disables the scaling.
    tokens_per_second: Optional[float] = 6.0
    length_slack: int = 8
    # Mask blank and eot at the first generated step (Whisper's begin_suppress), so the result is never empty
    # for audio that reached the decoder.
    suppress_blank: bool = True
    # No speech: P(<|nocaptions|>) at the SOT position above this AND a quiet clip -> empty text. Whisper's
    # training subtitles make it "hear" phrases like "字幕由Amara.org社群提供" in silence. None disables.
    no_speech_threshold: Optional[float] = 0.6
    # "Quiet" for the rule above: whole-clip RMS below this many dBFS (room noise, not speech).
    no_speech_rms_dbfs: float = -45.0
    # Peak below this many dBFS is digital silence: empty text without running the model at all. None disables.
    silence_peak_dbfs: Optional[float] = -60.0
    # Repetition guard: stop when the last n-gram (n = 1..repetition_ngram tokens) has occurred
    # repetition_count times in a row, and keep one copy. 0 disables.
    repetition_count: int = 4
    repetition_ngram: int = 8
    # Whisper mixes Traditional and Simplified characters; training labels and users expect Simplified.
    to_simplified: bool = True
    # 1 = greedy. Beam search keeps this many hypotheses (scored by log-probability / (tokens + 1)): on
    # speaker A's personal model 4 beams took CER 10.6 -> 9.0 % in PyTorch, for about 2x the time.
    beam_size: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ResonanceError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}", "use e.g. 128")
        if self.tokens_per_second is not None and self.tokens_per_second <= 0:
            raise ResonanceError("tokens_per_second must be positive or None", "use e.g. 6.0")
        if self.no_speech_threshold is not None and not 0.0 <= self.no_speech_threshold <= 1.0:
            raise ResonanceError("no_speech_threshold is a probability in [0, 1] or None", "use e.g. 0.6")
        if self.repetition_count < 0 or self.repetition_ngram < 1:
            raise ResonanceError("repetition_count must be >= 0 and repetition_ngram >= 1", "use 4 and 8")
        if not 1 <= self.beam_size <= 16:
            raise ResonanceError(
                f"beam_size must be 1 (greedy) to 16, got {self.beam_size}", "use 1 or e.g. 4"
            )

    @classmethod
    def coerce(cls, value: Union[DecodingOptions, Mapping[str, Any], None]) -> DecodingOptions:
        """Accept the dataclass, a dict (from YAML/JSON; unknown keys are an error) or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        reject_unknown_fields(cls, value, "decoding option")
        return cls(**dict(value))

    def token_budget(self, audio_seconds: float) -> int:
        """Tokens allowed for ``audio_seconds`` of audio."""
        if self.tokens_per_second is None:
            return self.max_new_tokens
        scaled = math.ceil(self.tokens_per_second * audio_seconds) + self.length_slack
        return max(1, min(self.max_new_tokens, scaled))


# Options that make the runtime decode exactly like PyTorch `generate` (greedy, no guards): parity checks.
PLAIN = DecodingOptions(
    tokens_per_second=None, no_speech_threshold=None, silence_peak_dbfs=None, repetition_count=0
)


@dataclass(frozen=True)
class DecodeOutput:
    tokens: Tuple[int, ...]  # generated text tokens, without the SOT sequence and eot
    no_speech_prob: float  # P(<|nocaptions|>) at the SOT position
    stopped_by: str  # "eot", "budget", "context" (max_target_positions), "repetition", "no_speech"


def repeated_tail(tokens: Sequence[int], count: int, max_ngram: int) -> int:
    """How many tokens to drop so a tail of ``count`` identical n-grams keeps only one; 0 if no such loop."""
    if count < 2:
        return 0
    for n in range(1, max_ngram + 1):
        span = n * count
        if len(tokens) < span:
            break
        tail = list(tokens[-span:])
        gram = tail[-n:]
        if all(tail[i * n : (i + 1) * n] == gram for i in range(count - 1)):
            return span - n
    return 0


def suppress_mask(tokens: TokenSpec, vocab_size: int) -> np.ndarray:
    """Boolean mask of ids never allowed: the manifest's suppress list and every special id above eot."""
    mask = np.zeros(vocab_size, dtype=bool)
    ids = [i for i in tokens.suppress if 0 <= i < vocab_size]
    mask[ids] = True
    mask[tokens.eot + 1 :] = True
    return mask


class GreedyDecoder:
    """Greedy search over the merged decoder session. Stateless between calls: safe to share across threads."""

    def __init__(self, session, tokens: TokenSpec, model: ModelSpec) -> None:
        self.session = session
        self.tokens = tokens
        self.max_positions = model.max_target_positions
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        for required in ("input_ids", "encoder_hidden_states", "use_cache_branch", "logits"):
            if required not in self.input_names + self.output_names:
                raise ResonanceError(
                    f"decoder.onnx has no '{required}': not an Optimum merged Whisper decoder",
                    "re-export the bundle with `resonance export`",
                )
        self.past_names = [n for n in self.input_names if n.startswith("past_key_values.")]
        # present.3.decoder.key (output) -> past_key_values.3.decoder.key (input of the next step)
        self.present_to_past = {
            n: "past_key_values." + n[len("present.") :]
            for n in self.output_names
            if n.startswith("present.")
        }
        missing = set(self.past_names) - set(self.present_to_past.values())
        if missing:
            raise ResonanceError(
                f"decoder.onnx has no present output for {sorted(missing)}", "re-export the bundle"
            )
        self.empty_past = {
            i.name: self._empty_past(i, model) for i in session.get_inputs() if i.name in self.past_names
        }
        self.mask = suppress_mask(tokens, model.vocab_size)

    @staticmethod
    def _empty_past(arg, model: ModelSpec) -> np.ndarray:
        heads, head_dim = arg.shape[1], arg.shape[3]
        if not isinstance(heads, int):
            heads = model.decoder_attention_heads
        if not isinstance(head_dim, int):
            head_dim = model.d_model // model.decoder_attention_heads
        return np.zeros((1, heads, 0, head_dim), dtype=numpy_dtype(arg.type))

    def decode(
        self,
        encoder_hidden_states,
        max_new_tokens: int,
        suppress_blank: bool = True,
        stop_if_no_speech: Optional[float] = None,
        repetition_count: int = 0,
        repetition_ngram: int = 8,
        runner: Optional[StepRunner] = None,
        primed: Optional[Tuple[Any, Dict[str, Any]]] = None,
        beam_size: int = 1,
    ) -> DecodeOutput:
        """Decode one window. ``stop_if_no_speech``: a threshold checked after the first step (quiet audio).

        ``primed``: the result of :meth:`prime` for these encoder states, when the caller already ran it
        (phrase scoring reuses the same first step). ``beam_size`` > 1: beam search (:meth:`_beam`).
        """
        runner = runner or NumpyStepRunner(self.session)
        budget = min(max_new_tokens, self.max_positions - len(self.tokens.sot_sequence))
        logits, presents = primed if primed is not None else self.prime(encoder_hidden_states, runner)
        # Cross-attention keys/values depend only on the audio: computed once in the first step. In the cache
        # branch Optimum's merged graph returns empty placeholders for them, so they are never taken from there.
        cross = {name: value for name, value in presents.items() if ".encoder." in name}
        no_speech_prob = self.no_speech_prob(logits[0, 0])
        if stop_if_no_speech is not None and no_speech_prob > stop_if_no_speech:
            return DecodeOutput((), no_speech_prob, "no_speech")
        if beam_size > 1:
            tokens, stopped_by = self._beam(
                encoder_hidden_states, logits, presents, budget, beam_size, suppress_blank
            )
            drop = repeated_tail(tokens, repetition_count, repetition_ngram)
            if drop:
                tokens, stopped_by = tokens[:-drop], "repetition"
            if stopped_by == "budget" and budget < max_new_tokens:
                stopped_by = "context"
            return DecodeOutput(tuple(tokens), no_speech_prob, stopped_by)
        generated: List[int] = []
        stopped_by = "budget"
        while len(generated) < budget:
            token = self._next_token(logits[0, -1], first=not generated and suppress_blank)
            if token == self.tokens.eot:
                stopped_by = "eot"
                break
            generated.append(token)
            drop = repeated_tail(generated, repetition_count, repetition_ngram)
            if drop:
                del generated[-drop:]
                stopped_by = "repetition"
                break
            if len(generated) >= budget:
                stopped_by = "budget" if budget == max_new_tokens else "context"
                break
            past = {**_self_attention(presents), **cross}
            ids = np.asarray([[token]], dtype=np.int64)
            logits, presents = self.cached_step(runner, past, ids, encoder_hidden_states)
        return DecodeOutput(tuple(generated), no_speech_prob, stopped_by)

    def _beam(
        self,
        encoder_hidden_states,
        logits,
        presents: Dict[str, Any],
        budget: int,
        beam_size: int,
        suppress_blank: bool,
    ) -> Tuple[List[int], str]:
        """Beam search: the beams share one decoder call per step (batch = beams); the audio's cross-attention
        cache stays batch 1 and the graph broadcasts it (as in phrase scoring). A hypothesis ends at eot and
        is ranked by log-probability / (tokens + 1); the search ends when ``beam_size`` have ended or at the
        budget. Returns (tokens, "eot" | "budget")."""
        # Host arrays throughout (beams are re-ordered with numpy): an IOBinding first step is copied back once.
        runner = NumpyStepRunner(self.session)
        presents = {name: _host(value) for name, value in presents.items()}
        cross = {name: value for name, value in presents.items() if ".encoder." in name}
        self_past = _self_attention(presents)
        beams: List[Tuple[List[int], float]] = [([], 0.0)]  # (tokens, summed log-probability)
        finished: List[Tuple[float, List[int]]] = []
        step_logits = _host(logits)[:, -1]  # (beams, vocab)
        for _ in range(budget):
            candidates: List[Tuple[float, int, int]] = []  # (score, beam index, token)
            for b, (tokens, score) in enumerate(beams):
                logprobs = self._log_softmax(step_logits[b], first=not tokens and suppress_blank)
                for token in np.argsort(logprobs)[::-1][: beam_size + 1]:
                    if np.isfinite(logprobs[token]):
                        candidates.append((score + float(logprobs[token]), b, int(token)))
            candidates.sort(key=lambda c: c[0], reverse=True)
            next_beams: List[Tuple[List[int], float]] = []
            sources: List[int] = []
            for score, b, token in candidates:
                if token == self.tokens.eot:
                    finished.append((score / (len(beams[b][0]) + 1), beams[b][0]))
                elif len(next_beams) < beam_size:
                    next_beams.append((beams[b][0] + [token], score))
                    sources.append(b)
                if len(next_beams) == beam_size:
                    break
            if len(finished) >= beam_size or not next_beams:
                break
            beams = next_beams
            past = {name: np.take(value, sources, axis=0) for name, value in self_past.items()}
            ids = np.asarray([[tokens[-1]] for tokens, _ in beams], dtype=np.int64)
            out_logits, out_presents = self.cached_step(runner, {**past, **cross}, ids, encoder_hidden_states)
            step_logits = out_logits[:, -1]
            self_past = _self_attention(out_presents)
        if finished:
            return max(finished, key=lambda f: f[0])[1], "eot"
        return max(beams, key=lambda b: b[1] / (len(b[0]) + 1))[0], "budget"

    def _log_softmax(self, logits: np.ndarray, first: bool) -> np.ndarray:
        x = self._allowed(logits, first, np.float64)
        x -= x.max()
        return x - np.log(np.exp(x).sum())

    def _allowed(self, logits: np.ndarray, first: bool, dtype) -> np.ndarray:
        """A copy of ``logits`` (the session's buffer stays untouched) with Whisper's suppressed ids at -inf,
        and at the first generated position the begin-suppress ids too."""
        x = np.array(logits, dtype=dtype)
        x[self.mask] = -np.inf
        if first:
            x[list(self.tokens.begin_suppress)] = -np.inf
        return x

    def prime(self, encoder_hidden_states, runner: Optional[StepRunner] = None) -> Tuple[Any, Dict[str, Any]]:
        """The first step: the SOT sequence with empty pasts -> (logits [1, len(sot), vocab], presents).

        The presents hold the prompt's self-attention cache and the audio's cross-attention keys/values.
        """
        runner = runner or NumpyStepRunner(self.session)
        feeds: Dict[str, Any] = dict(self.empty_past)
        feeds["input_ids"] = np.asarray([list(self.tokens.sot_sequence)], dtype=np.int64)
        feeds["encoder_hidden_states"] = encoder_hidden_states
        feeds["use_cache_branch"] = np.asarray([False])
        return runner.step(feeds, self.present_to_past)

    def cached_step(
        self, runner: StepRunner, past: Dict[str, Any], input_ids: np.ndarray, encoder_hidden_states
    ):
        """A step of the cache branch: ``past`` (self- and cross-attention caches) + ``input_ids`` (batch, new
        tokens) -> (logits, presents). The graph reads the audio only through the cross-attention cache here;
        ``encoder_hidden_states`` is still one of its inputs."""
        feeds = dict(past)
        feeds["input_ids"] = input_ids
        feeds["encoder_hidden_states"] = encoder_hidden_states
        feeds["use_cache_branch"] = np.asarray([True])
        return runner.step(feeds, self.present_to_past)

    def _next_token(self, logits: np.ndarray, first: bool) -> int:
        return int(np.argmax(self._allowed(logits, first, np.float32)))

    def no_speech_prob(self, sot_logits: np.ndarray) -> float:
        # openai/whisper: softmax of the logits at the SOT position, probability of <|nocaptions|>.
        if self.tokens.no_speech is None:
            return 0.0
        x = np.asarray(sot_logits, dtype=np.float64)
        x = np.exp(x - x.max())
        return float(x[self.tokens.no_speech] / x.sum())


def _self_attention(presents: Dict[str, Any]) -> Dict[str, Any]:
    """The self-attention part of a step's cache (it grows each step; the cross-attention part is fixed)."""
    return {name: value for name, value in presents.items() if ".encoder." not in name}


def _host(value: Any) -> np.ndarray:
    """A numpy array from a numpy array or an onnxruntime OrtValue (IOBinding keeps outputs on the device)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


class StepRunner:
    """Runs one decoder step; returns (logits as numpy, the presents renamed as next step's past inputs)."""

    def step(self, feeds: Dict[str, Any], present_to_past: Dict[str, str]):
        raise NotImplementedError


class NumpyStepRunner(StepRunner):
    """CPU path: numpy in, numpy out (the KV cache is host memory anyway)."""

    def __init__(self, session) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]

    def step(self, feeds: Dict[str, Any], present_to_past: Dict[str, str]):
        values = self.session.run(self.output_names, feeds)
        out = dict(zip(self.output_names, values))
        presents = {present_to_past[n]: v for n, v in out.items() if n in present_to_past}
        return out["logits"], presents


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

    def step(self, feeds: Dict[str, Any], present_to_past: Dict[str, str]):
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
        return out["logits"].numpy(), presents
