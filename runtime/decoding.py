"""Whisper decoding over the merged decoder graph, shaped like openai/whisper ``decoding.py``.

* :class:`DecodingOptions`: every decoding choice, one frozen dataclass passed whole.
* The guards, all in this module: logit filters applied at every step (:class:`SuppressTokens`,
  :class:`SuppressBlank`), and the rules of a window (:class:`WindowGuards`: digital silence, the token budget,
  no speech; :class:`RepetitionStop`).
* Search strategies that drive a :class:`~resonance.runtime.merged_decoder.MergedDecoder` with the options
  whole: :class:`GreedySearch` and :class:`BeamSearch`.
* :class:`WindowDecoding` (whisper's ``DecodingTask``): one audio window from its first decoder step to tokens.

Token rules follow openai/whisper: the language and task are forced by the SOT sequence; ``suppress`` tokens are
masked at every step, and so is every special token above ``eot`` (other languages, tasks, <|nocaptions|>,
timestamps: we decode without timestamps, so none of them is ever valid output); ``begin_suppress`` (blank,
eot) is masked at the first generated step so the model cannot return nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from resonance.errors import ResonanceError, reject_unknown_fields
from resonance.runtime.bundle import TokenSpec
from resonance.runtime.merged_decoder import MergedDecoder, NumpyStepRunner, Step, StepRunner, to_host
from resonance.runtime.schema import check_types

MAX_BEAM_SIZE = 16  # each beam is one more decoder row per step: a bound on the work a request can ask for


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
    # 1 = greedy. Beam search keeps this many hypotheses (scored by log-probability / (tokens + 1)), all in
    # one decoder call per step. 4 by default: on speaker A's 50-recording int8 bundle (today's recipe) it took
    # the phrases the patient recorded from 90.0 to 93.5 % characters right and the others from 79.1 to
    # 79.4 %, for ~+35 ms per clip on 2 cores (README, "Decoding").
    beam_size: int = 4

    def __post_init__(self) -> None:
        wrong = check_types(self)  # options also come from YAML and JSON: "4" or true is not a beam size
        if wrong:
            raise ResonanceError(f"'{wrong[0]}' {wrong[1]}", "see DecodingOptions in runtime/decoding.py")
        if self.max_new_tokens < 1:
            raise ResonanceError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}", "use e.g. 128")
        if self.tokens_per_second is not None and self.tokens_per_second <= 0:
            raise ResonanceError("tokens_per_second must be positive or None", "use e.g. 6.0")
        if self.no_speech_threshold is not None and not 0.0 <= self.no_speech_threshold <= 1.0:
            raise ResonanceError("no_speech_threshold is a probability in [0, 1] or None", "use e.g. 0.6")
        if self.repetition_count < 0 or self.repetition_ngram < 1:
            raise ResonanceError("repetition_count must be >= 0 and repetition_ngram >= 1", "use 4 and 8")
        if not 1 <= self.beam_size <= MAX_BEAM_SIZE:
            raise ResonanceError(
                f"'beam_size' must be between 1 (greedy) and {MAX_BEAM_SIZE}, got {self.beam_size}",
                "use 1 or e.g. 4",
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


# Greedy search with the guards: how the runtime is timed against engines that decode greedily (bench, gpu-check).
GREEDY = DecodingOptions(beam_size=1)
# Options that make the runtime decode exactly like PyTorch `generate` (greedy, no guards): parity checks.
PLAIN = replace(
    GREEDY, tokens_per_second=None, no_speech_threshold=None, silence_peak_dbfs=None, repetition_count=0
)


@dataclass(frozen=True)
class DecodeOutput:
    tokens: Tuple[int, ...]  # generated text tokens, without the SOT sequence and eot
    no_speech_prob: float  # P(<|nocaptions|>) at the SOT position
    stopped_by: str  # "eot", "budget", "context" (max_target_positions), "repetition", "no_speech"
    # Summed log-probability of the chosen tokens (after the logit filters), eot included when it ended the
    # window, as openai/whisper's ``sum_logprobs``; 0.0 when nothing was generated.
    sum_logprob: float = 0.0

    @property
    def avg_logprob(self) -> float:
        """openai/whisper's ``avg_logprob``: the sum over (tokens + 1), the +1 being eot. Below about -1 the
        decoding is unsure (OpenAI's verbose_json segments report it)."""
        return self.sum_logprob / (len(self.tokens) + 1)


@dataclass(frozen=True)
class SearchResult:
    """What a search strategy found for one window."""

    tokens: List[int]
    logprobs: List[float]  # of each token in ``tokens``, then of eot when ``stopped_by`` is "eot"
    stopped_by: str

    def cut_loop(self, drop: int) -> SearchResult:
        """The result with its last ``drop`` tokens (a repetition loop) removed."""
        kept = len(self.tokens) - drop
        return SearchResult(self.tokens[:kept], self.logprobs[:kept], "repetition")


# -- the guards -------------------------------------------------------------------------------------------------


def dbfs(value: float) -> float:
    """Amplitude (1.0 = full scale) in dB relative to full scale; -inf for 0."""
    return 20.0 * math.log10(value) if value > 0 else -math.inf


@dataclass(frozen=True)
class WindowGuards:
    """The rules one audio window is decoded under, decided from its samples before the model runs."""

    skip: bool  # no samples, or digital silence (peak below silence_peak_dbfs): the model does not run
    max_new_tokens: int  # the token budget for the window's length (DecodingOptions.token_budget)
    # Quiet window (RMS below no_speech_rms_dbfs): P(no speech) above this is an empty result. None: loud.
    no_speech_threshold: Optional[float]

    @classmethod
    def for_window(cls, window: np.ndarray, sample_rate: int, options: DecodingOptions) -> WindowGuards:
        peak = float(np.max(np.abs(window))) if window.size else 0.0
        if window.size == 0 or (
            options.silence_peak_dbfs is not None and dbfs(peak) < options.silence_peak_dbfs
        ):
            return cls(skip=True, max_new_tokens=0, no_speech_threshold=None)
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        quiet = dbfs(rms) < options.no_speech_rms_dbfs
        return cls(
            skip=False,
            max_new_tokens=options.token_budget(window.size / sample_rate),
            no_speech_threshold=options.no_speech_threshold if quiet else None,
        )

    def no_speech(self, no_speech_prob: float) -> bool:
        """Whether the model's P(no speech) makes this window an empty result (quiet audio only)."""
        return self.no_speech_threshold is not None and no_speech_prob > self.no_speech_threshold


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


@dataclass(frozen=True)
class RepetitionStop:
    """Fine-tuned Whisper loops (on silence, in Chinese): a tail of ``count`` identical n-grams is a loop."""

    count: int
    max_ngram: int

    def excess(self, tokens: Sequence[int]) -> int:
        """Tokens to drop from the end so the loop keeps one copy; 0 when the tail is no loop."""
        return repeated_tail(tokens, self.count, self.max_ngram)


def suppress_mask(tokens: TokenSpec, vocab_size: int) -> np.ndarray:
    """Boolean mask of ids never allowed: the manifest's suppress list and every special id above eot."""
    mask = np.zeros(vocab_size, dtype=bool)
    ids = [i for i in tokens.suppress if 0 <= i < vocab_size]
    mask[ids] = True
    mask[tokens.eot + 1 :] = True
    return mask


class LogitFilter:
    """Changes one hypothesis's next-token logits in place, given the tokens it has generated so far."""

    def apply(self, logits: np.ndarray, generated: Sequence[int]) -> None:
        raise NotImplementedError


class SuppressTokens(LogitFilter):
    """Ids that are never valid output (:func:`suppress_mask`) get -inf at every step."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask

    def apply(self, logits: np.ndarray, generated: Sequence[int]) -> None:
        logits[self.mask] = -np.inf


class SuppressBlank(LogitFilter):
    """Blank and eot get -inf at the first generated step, so audio that reached the decoder is never "" ."""

    def __init__(self, begin_suppress: Sequence[int]) -> None:
        self.ids = list(begin_suppress)

    def apply(self, logits: np.ndarray, generated: Sequence[int]) -> None:
        if not generated:
            logits[self.ids] = -np.inf


def logit_filters(graph: MergedDecoder, options: DecodingOptions) -> List[LogitFilter]:
    filters: List[LogitFilter] = [SuppressTokens(suppress_mask(graph.tokens, graph.vocab_size))]
    if options.suppress_blank:
        filters.append(SuppressBlank(graph.tokens.begin_suppress))
    return filters


def filtered(
    filters: Sequence[LogitFilter], logits: np.ndarray, generated: Sequence[int], dtype
) -> np.ndarray:
    """A copy of ``logits`` in ``dtype`` with every filter applied (the session's buffer stays untouched)."""
    x = np.array(logits, dtype=dtype)
    for logit_filter in filters:
        logit_filter.apply(x, generated)
    return x


# -- search strategies --------------------------------------------------------------------------------------------


class SearchStrategy:
    """Turns a window's first decoder step into tokens: ``search(...) -> SearchResult``."""

    def __init__(self, graph: MergedDecoder, options: DecodingOptions) -> None:
        self.graph = graph
        self.options = options
        self.filters = logit_filters(graph, options)
        self.repetition = RepetitionStop(options.repetition_count, options.repetition_ngram)

    def search(self, primed: Step, encoder_hidden_states, runner: StepRunner, budget: int) -> SearchResult:
        raise NotImplementedError


class GreedySearch(SearchStrategy):
    """The most likely token at every step; stops at eot, at the budget, or at the first loop."""

    def search(self, primed: Step, encoder_hidden_states, runner: StepRunner, budget: int) -> SearchResult:
        eot = self.graph.tokens.eot
        cross = primed.cross_attention
        step = primed
        generated: List[int] = []
        logprobs: List[float] = []
        while len(generated) < budget:
            logits = filtered(self.filters, step.logits[0, -1], generated, np.float32)
            token = int(np.argmax(logits))
            logprobs.append(_token_logprob(logits, token))
            if token == eot:
                return SearchResult(generated, logprobs, "eot")
            generated.append(token)
            drop = self.repetition.excess(generated)
            if drop:
                return SearchResult(generated, logprobs, "repetition").cut_loop(drop)
            if len(generated) >= budget:
                break
            ids = np.asarray([[token]], dtype=np.int64)
            step = self.graph.cached_step(
                runner, {**step.self_attention, **cross}, ids, encoder_hidden_states
            )
        return SearchResult(generated, logprobs, "budget")


class BeamSearch(SearchStrategy):
    """``beam_size`` hypotheses share one decoder call per step (batch = beams); the audio's cross-attention
    cache stays batch 1 and the graph broadcasts it (as in phrase scoring). A hypothesis ends at eot and is
    ranked by log-probability / (tokens + 1); the search ends when ``beam_size`` have ended or at the budget.
    A loop at the end of the winner is cut to one copy."""

    def search(self, primed: Step, encoder_hidden_states, runner: StepRunner, budget: int) -> SearchResult:
        found = self._beams(primed, encoder_hidden_states, budget)
        drop = self.repetition.excess(found.tokens)
        return found.cut_loop(drop) if drop else found

    def _beams(self, primed: Step, encoder_hidden_states, budget: int) -> SearchResult:
        beam_size = self.options.beam_size
        eot = self.graph.tokens.eot
        # Host arrays throughout (beams are re-ordered with numpy): an IOBinding first step is copied back once.
        runner = NumpyStepRunner(self.graph.session)
        host = Step(to_host(primed.logits), {name: to_host(value) for name, value in primed.presents.items()})
        cross = host.cross_attention
        self_past = host.self_attention
        # A hypothesis: (tokens, each token's log-probability); its score is their sum.
        beams: List[Tuple[List[int], List[float]]] = [([], [])]
        finished: List[Tuple[float, SearchResult]] = []  # (score / (tokens + 1), result)
        step_logits = host.logits[:, -1]  # (beams, vocab)
        for _ in range(budget):
            candidates: List[Tuple[float, int, int, float]] = []  # (score, beam index, token, its logprob)
            for b, (tokens, token_logprobs) in enumerate(beams):
                logprobs = _log_softmax(filtered(self.filters, step_logits[b], tokens, np.float32))
                score = math.fsum(token_logprobs)
                for token in _top(logprobs, beam_size + 1):
                    if np.isfinite(logprobs[token]):
                        lp = float(logprobs[token])
                        candidates.append((score + lp, b, int(token), lp))
            candidates.sort(key=lambda c: c[0], reverse=True)
            next_beams: List[Tuple[List[int], List[float]]] = []
            sources: List[int] = []
            for score, b, token, lp in candidates:
                tokens, token_logprobs = beams[b]
                if token == eot:
                    ended = SearchResult(list(tokens), [*token_logprobs, lp], "eot")
                    finished.append((score / (len(tokens) + 1), ended))
                elif len(next_beams) < beam_size:
                    next_beams.append(([*tokens, token], [*token_logprobs, lp]))
                    sources.append(b)
                if len(next_beams) == beam_size:
                    break
            if len(finished) >= beam_size or not next_beams:
                break
            beams = next_beams
            past = {name: np.take(value, sources, axis=0) for name, value in self_past.items()}
            ids = np.asarray([[tokens[-1]] for tokens, _ in beams], dtype=np.int64)
            step = self.graph.cached_step(runner, {**past, **cross}, ids, encoder_hidden_states)
            step_logits = step.logits[:, -1]
            self_past = step.self_attention
        if finished:
            return max(finished, key=lambda f: f[0])[1]
        tokens, token_logprobs = max(beams, key=lambda b: math.fsum(b[1]) / (len(b[0]) + 1))
        return SearchResult(tokens, token_logprobs, "budget")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of float32 logits (exponentials in float32: see :func:`_token_logprob`)."""
    x = x - x.max()
    return x.astype(np.float64) - math.log(np.exp(x).sum(dtype=np.float64))


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, largest first (a partition, not a sort of the whole vocabulary:
    3 ms -> 0.3 ms for 51865 logits)."""
    if k >= values.size:
        return np.argsort(-values, kind="stable")
    best = np.argpartition(-values, k)[:k]
    return best[np.argsort(-values[best], kind="stable")]


def _token_logprob(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token] (-inf entries, the filtered tokens, contribute nothing).

    The exponentials in float32, summed in float64: numpy's float64 exp takes a slow path over the -inf of
    the filtered tokens (0.9 ms a step for 51865 logits, a quarter of an int8 decoder step; float32: 0.08 ms)
    and the result differs by ~1e-7."""
    x = np.asarray(logits, dtype=np.float32)
    top = x.max()
    total = np.exp(x - top).sum(dtype=np.float64)
    return float(x[token]) - float(top) - math.log(total)


# -- one window -----------------------------------------------------------------------------------------------------


class WindowDecoding:
    """A window's free transcription under ``options`` (whisper's ``DecodingTask``): the no-speech rule on the
    first step, then the search strategy within the token budget and the decoder's positions."""

    def __init__(self, graph: MergedDecoder, options: DecodingOptions) -> None:
        self.graph = graph
        self.options = options
        strategy = BeamSearch if options.beam_size > 1 else GreedySearch
        self.strategy: SearchStrategy = strategy(graph, options)

    def run(
        self, primed: Step, encoder_hidden_states, runner: StepRunner, guards: WindowGuards
    ) -> DecodeOutput:
        """``primed`` is ``graph.prime(encoder_hidden_states, runner)`` (phrase scoring shares it)."""
        no_speech_prob = self.graph.no_speech_prob(primed)
        if guards.no_speech(no_speech_prob):
            return DecodeOutput((), no_speech_prob, "no_speech")
        budget = min(guards.max_new_tokens, self.graph.max_new_positions)
        found = self.strategy.search(primed, encoder_hidden_states, runner, budget)
        stopped_by = found.stopped_by
        if stopped_by == "budget" and budget < guards.max_new_tokens:
            stopped_by = "context"  # the decoder's positions ran out before the window's budget
        return DecodeOutput(tuple(found.tokens), no_speech_prob, stopped_by, math.fsum(found.logprobs))
