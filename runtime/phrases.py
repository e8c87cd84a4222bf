"""Phrase-board mode: which of the patient's known phrases was said, or "none of these".

Most of what a person with cerebral palsy says to a caregiver is one of a few dozen everyday phrases, the ones
recorded for training and those the caregiver adds (the bundle's board, runtime/board.py). Picking one of them is far more reliable than free
transcription, provided an unknown request is not forced onto a known phrase.

How a phrase is scored, with the same model that transcribes:

* The audio is encoded once and the decoder's first step runs once on the SOT prompt (shared with the free
  transcription). Its logits give P(first token) of every phrase; its outputs hold the prompt's self-attention
  cache and the audio's cross-attention keys/values.
* The candidates are teacher-forced in batched calls on the decoder's cache branch (batches of similar
  length): the prompt's self-attention cache tiled over the batch, the audio's cross-attention cache passed
  once and broadcast by the graph (no per-candidate copy), ``input_ids`` = the phrase's tokens (right-padded;
  causal attention keeps padding out of the real positions). Position j's logits give log p(token j+1), the
  last one log p(end of text).
* score = (sum of those log-probabilities) / sqrt(tokens + 1). Between the plain sum (favours short phrases)
  and the per-token mean (favours phrases whose rare characters the byte-level BPE splits into several
  tokens, all near-certain after the first). Measured top-1 on speaker A take2, 126 phrases, exhaustive:
  personalised whisper-base 95.2 % (mean per token 92.1 %, per character 94.4 %, sum 92.9 %); generic
  whisper-base 65.9 % (66.7 %, 54.0 %, 46.8 %).
* Candidates: every phrase when they fit ``max_rows`` decoder positions; otherwise a shortlist, nearest to the
  free transcription first (character edit distance, ties by P(first token)). Every scored position costs
  the decoder plus its 51865-way output layer (about 1 ms on 2 CPU cores for whisper-base), so the budget is
  what keeps mode=both within 1.5x mode=free whatever the list's length.
* Confidence: a softmax over the candidates' scores and a "none of these" pseudo-candidate with a fixed score,
  both divided by a temperature (:class:`PhraseOptions`; fitted by ``resonance eval phrases``). The
  confidences and P(none) sum to 1. "None of these" is decided when P(none) reaches ``max_none``; not when
  the best phrase's own confidence is low, which also happens when two listed phrases are alike (我想听音乐 /
  我想听新闻) and the best is right: on speaker A that rule kept 2-3 % fewer right answers at the same rate of
  rejected unknown requests.
* The free transcription is a second witness: the best phrase is also rejected when the free text differs
  from it in more than ``max_distance`` of its characters (normalised edit distance). An unknown request is
  often heard right, or nearly, as free text (我想回家), while the scores alone push it onto the nearest listed
  phrase (我想咳嗽, P(none) 0.03). Measured on speaker A, 30-recording bundle (int8), take2: 30 listed
  phrases, 96 never listed: P(none) >= 0.2 alone accepted 24 of the 96 unknown requests (25 %) and rejected
  3 of 30 listed ones; with ``max_distance`` 1/3 as well, 2 of 96 (2 %) and 5 of 30 (README, "A model that
  keeps learning"). So mode "phrases" decodes the free text too while ``max_distance`` is set.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from resonance.errors import ResonanceError, reject_unknown_fields
from resonance.runtime.merged_decoder import MergedDecoder, Step, StepRunner, to_host
from resonance.text import edit_distance

log = logging.getLogger(__name__)

MODES = ("free", "phrases", "both")
# Why a match has no accepted phrase (PhraseMatch.reason).
MATCHED = "matched"
NONE_OF_THESE = "none_of_these"
NO_PHRASES = "no_phrases"
NO_SPEECH = "no_speech"


@dataclass(frozen=True)
class PhraseOptions:
    top_k: int = 3  # candidates returned, best first
    # Calibration: confidence = softmax over {score / temperature} and {none_score / temperature}. Defaults:
    # fitted by `resonance eval phrases` on speaker A's personalised whisper-base (take2, fp32); a bundle's own
    # fit (`--save`, manifest phrase_calibration) replaces them. The generic whisper-base scores lower
    # (fitted T 0.84, none -5.8): with these defaults it rejects more.
    temperature: float = 0.47
    none_score: float = -3.6  # "none of these" acts like a phrase with this score
    max_none: float = 0.2  # P("none of these") from which the best phrase is rejected
    # Reject the best phrase when the free transcription differs from it in more than this share of its
    # characters (edit distance / the longer length, after normalisation); None: decide on the scores alone.
    max_distance: Optional[float] = 1 / 3
    # Decoder positions scored per utterance (phrase tokens, summed over candidates); None: every phrase.
    max_rows: Optional[int] = 64
    # Cap on the memory of one batched decoder call: the candidates' logits (vocab floats per position), and
    # where the graph cannot broadcast it, the audio's cross-attention cache copied per candidate (6 MB for
    # whisper-base with a 5 s window, 37 MB with 30 s).
    batch_memory_mb: float = 256.0

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ResonanceError(f"top_k must be >= 1, got {self.top_k}", "use e.g. 3")
        if not self.temperature > 0:
            raise ResonanceError(f"temperature must be positive, got {self.temperature}", "use e.g. 0.25")
        if not 0.0 <= self.max_none <= 1.0:
            raise ResonanceError("max_none is a probability in [0, 1]", "use e.g. 0.2")
        if self.max_distance is not None and not 0.0 <= self.max_distance <= 1.0:
            raise ResonanceError("max_distance is a share of characters in [0, 1] (or None)", "use e.g. 0.34")
        if self.max_rows is not None and self.max_rows < 1:
            raise ResonanceError("max_rows must be >= 1 or None (score every phrase)", "use e.g. 64")
        if not self.batch_memory_mb > 0:
            raise ResonanceError("batch_memory_mb must be positive", "use e.g. 256")

    @classmethod
    def coerce(
        cls, value: Union[PhraseOptions, Mapping[str, Any], None], base: Optional[PhraseOptions] = None
    ) -> PhraseOptions:
        """The dataclass as is; a dict (unknown keys are an error) as changes to ``base``; None: ``base``."""
        base = base if base is not None else cls()
        if value is None:
            return base
        if isinstance(value, cls):
            return value
        reject_unknown_fields(cls, value, "phrase option")
        return replace(base, **dict(value))


def fitted_options(calibration: Optional[Mapping[str, Any]]) -> PhraseOptions:
    """A bundle's ``phrase_calibration`` as options: its PhraseOptions fields on top of the defaults. Other keys
    (how it was fitted, or options of a newer runtime) are not options here and are left out, so a bundle made
    by a newer export still loads."""
    from dataclasses import fields

    known = {f.name for f in fields(PhraseOptions)}
    return PhraseOptions.coerce({k: v for k, v in (calibration or {}).items() if k in known})


@dataclass(frozen=True)
class PhraseCandidate:
    text: str
    confidence: float  # calibrated probability that this phrase was said, in [0, 1]
    score: float  # sum of log-probabilities / sqrt(tokens + 1), end of text included; higher is better


@dataclass(frozen=True)
class PhraseMatch:
    best: Optional[str]  # the accepted phrase; None when rejected or there is no list
    confidence: float  # the top candidate's confidence (0.0 without candidates)
    candidates: Tuple[PhraseCandidate, ...]  # top-k, best first
    rejected: bool  # True: "none of these" (or nothing to match)
    reason: str  # matched, none_of_these, no_phrases, no_speech
    none_confidence: float = 0.0  # P("none of these")
    # How far the free transcription is from the best phrase (share of characters); None: no free text
    distance: Optional[float] = None
    scored: int = 0  # phrases the model scored (all, or the shortlist)
    total: int = 0  # phrases in the list

    def to_json(self) -> Dict[str, Any]:
        """The reply fields of the API and the CLI (``phrase``, ``phrase_confidence``, ``phrases`` …)."""
        return {
            "phrase": self.best,
            "phrase_confidence": round(self.confidence, 4) if self.candidates else None,
            "phrases": [{"text": c.text, "confidence": round(c.confidence, 4)} for c in self.candidates],
            "phrase_rejected": self.rejected,
            "phrase_reason": self.reason,
        }


def empty_match(reason: str, total: int = 0) -> PhraseMatch:
    return PhraseMatch(None, 0.0, (), True, reason, total=total)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ResonanceError(f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    return mode


def clean_phrases(phrases: Sequence[str]) -> List[str]:
    """Stripped, non-empty, first occurrence of each: the list as the runtime scores it."""
    seen: Dict[str, None] = {}
    for phrase in phrases:
        if not isinstance(phrase, str):
            raise ResonanceError(f"a phrase must be text, got {phrase!r}", "pass a list of strings")
        text = phrase.strip()
        if text:
            seen.setdefault(text, None)
    return list(seen)


@dataclass(frozen=True, eq=False)
class PhraseSet:
    """A phrase list ready to score: token ids and normalisation lengths, computed once per list."""

    texts: Tuple[str, ...]
    tokens: Tuple[Tuple[int, ...], ...]
    units: np.ndarray  # the score's divisor per phrase: sqrt(tokens + 1), end of text included
    normalized: Tuple[str, ...]  # for the edit distance to the free transcription
    total_rows: int = 0  # decoder positions of the whole list (tokens summed)

    @classmethod
    def build(cls, phrases: Sequence[str], tokenizer, max_tokens: int) -> PhraseSet:
        from resonance.text import normalize_for_cer

        texts = clean_phrases(phrases)
        tokens = []
        for text in texts:
            ids = tuple(tokenizer.encode(text))
            if not ids or len(ids) > max_tokens:
                raise ResonanceError(
                    f"the phrase {text!r} is {len(ids)} tokens long; phrases are at most {max_tokens}",
                    "use short everyday phrases (one request each)",
                )
            tokens.append(ids)
        units = np.sqrt(np.asarray([len(ids) + 1 for ids in tokens], dtype=np.float64))
        normalized = tuple(normalize_for_cer(t) for t in texts)
        return cls(tuple(texts), tuple(tokens), units, normalized, sum(len(t) for t in tokens))

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, indices: Optional[Sequence[int]] = None) -> int:
        """Decoder positions that scoring ``indices`` (default: every phrase) costs."""
        if indices is None:
            return self.total_rows
        return sum(len(self.tokens[i]) for i in indices)


def shortlist(
    phrases: PhraseSet, free_text: Optional[str], first_logprobs: np.ndarray, max_rows: Optional[int]
) -> List[int]:
    """Indices of the phrases to score: all when they fit ``max_rows``, else the nearest to the free text.

    Nearest = smallest character edit distance to the free transcription (relative to the longer of the two),
    ties broken by the model's P(first token); phrases are taken in that order while their tokens fit.
    """
    everything = list(range(len(phrases)))
    if max_rows is None or phrases.rows() <= max_rows:
        return everything
    from resonance.text import normalize_for_cer

    heard = normalize_for_cer(free_text or "")
    distance = [edit_distance(heard, text) / max(len(heard), len(text), 1) for text in phrases.normalized]
    order = sorted(everything, key=lambda i: (distance[i], -float(first_logprobs[i])))
    chosen: List[int] = []
    rows = 0
    for i in order:
        rows += len(phrases.tokens[i])
        if chosen and rows > max_rows:
            break
        chosen.append(i)
    return chosen


def log_softmax_at(logits: np.ndarray, index: np.ndarray) -> np.ndarray:
    """log softmax(logits)[..., index] over the last axis, in float64 (logits [..., V], index [...])."""
    logits = np.asarray(logits)
    top = logits.max(axis=-1, keepdims=True)
    picked = np.take_along_axis(logits, index[..., np.newaxis], axis=-1)[..., 0].astype(np.float64)
    shifted = np.subtract(logits, top, dtype=np.float32)  # one temporary, exponentiated in place
    total = np.exp(shifted, out=shifted).sum(axis=-1, dtype=np.float64)
    return picked - top[..., 0].astype(np.float64) - np.log(total)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax of one logits vector, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max()
    return x - top - np.log(np.exp(x - top).sum())


# Cost of one extra decoder call, in decoder positions (its fixed overhead), when grouping candidates by length.
CALL_OVERHEAD_POSITIONS = 8


def length_groups(lengths: Sequence[int], max_batch: int) -> List[List[int]]:
    """Candidates grouped into batches of similar length: fewer padded positions, few calls.

    A batch costs (rows x its longest candidate) positions plus a call's overhead; the split of the
    length-sorted candidates into consecutive batches of at most ``max_batch`` minimises the total (dynamic
    programming over the sorted order, n <= a few hundred).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cost of batching the j shortest
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]  # the longest of any batch ending at j
        for i in range(max(0, j - max_batch), j):
            cost = best[i] + (j - i) * width + CALL_OVERHEAD_POSITIONS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: List[List[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def teacher_forced_logprobs(
    graph: MergedDecoder,
    primed: Step,
    candidates: Sequence[Sequence[int]],
    encoder_hidden_states,
    runner: StepRunner,
    batch_memory_mb: float = 256.0,
    broadcast: bool = True,
) -> List[np.ndarray]:
    """log p(token) of each candidate's tokens and end of text, given the audio: one array per candidate.

    ``primed`` is ``graph.prime(...)``: the SOT prompt's logits and presents. Candidates run in batches on the
    cache branch of the merged decoder (``input_ids`` of several positions; checked equal to step-by-step
    decoding in tests/test_phrases.py), grouped by length so padding stays small. ``broadcast``: pass the
    audio's cross-attention cache once (batch 1) and let the graph's MatMul broadcast it over the batch
    instead of copying it per candidate (6-37 MB each); see :func:`broadcast_works`.
    """
    if not candidates:
        return []
    eot = graph.tokens.eot
    logits0, presents = primed
    first = np.asarray(to_host(logits0))[0, -1]
    cache = {name: to_host(value) for name, value in presents.items()}
    tiled_names = [n for n in cache if not (broadcast and ".encoder." in n)]
    # Memory per batch row: the tiled caches and the row's logits (vocab floats per position).
    row_bytes = sum(cache[n].nbytes for n in tiled_names) + first.size * 4 * max(map(len, candidates))
    max_batch = max(1, int(batch_memory_mb * 1e6 // max(1, row_bytes)))
    groups = length_groups([len(c) for c in candidates], max_batch)
    # Tiled once for the largest batch; smaller batches take its first rows (still contiguous, no copy).
    rows = max(len(g) for g in groups)
    tiled = {name: np.repeat(cache[name], rows, axis=0) for name in tiled_names}
    first_lp = log_softmax(first)[[c[0] for c in candidates]]
    results: List[np.ndarray] = [np.empty(0)] * len(candidates)
    for group in groups:
        width = max(len(candidates[i]) for i in group)
        ids = np.full((len(group), width), eot, dtype=np.int64)
        for row, i in enumerate(group):
            ids[row, : len(candidates[i])] = candidates[i]
        past = {**cache, **{name: value[: len(group)] for name, value in tiled.items()}}
        logits, _ = graph.cached_step(runner, past, ids, encoder_hidden_states)
        # Only the real positions (not the padding): position j predicts token j+1, the last one end of text.
        row_index = np.concatenate([np.full(len(candidates[i]), r) for r, i in enumerate(group)])
        position = np.concatenate([np.arange(len(candidates[i])) for i in group])
        targets = np.concatenate(
            [np.append(np.asarray(candidates[i][1:], dtype=np.int64), eot) for i in group]
        )
        picked = log_softmax_at(np.asarray(logits)[row_index, position], targets)
        offset = 0
        for i in group:
            n = len(candidates[i])
            results[i] = np.concatenate([[first_lp[i]], picked[offset : offset + n]])
            offset += n
    return results


def broadcast_works(graph: MergedDecoder, primed: Step, encoder_hidden_states, runner: StepRunner) -> bool:
    """Whether this decoder graph broadcasts a batch-1 cross-attention cache over a batch, exactly.

    Optimum's Whisper decoder does (ONNX MatMul broadcasts batch dimensions), so phrase scoring need not copy
    the audio's keys/values per candidate. Checked once per Transcriber on two rows against the copied cache,
    because another exporter or execution provider could reshape by batch size and fail, or differ.
    """
    candidates = [[graph.tokens.eot - 1, 220], [220, graph.tokens.eot - 2]]  # any two real text tokens
    try:
        fast = teacher_forced_logprobs(
            graph, primed, candidates, encoder_hidden_states, runner, broadcast=True
        )
    except _run_errors() as exc:
        log.info("phrase scoring copies the cross-attention cache per candidate (%s)", exc)
        return False
    slow = teacher_forced_logprobs(graph, primed, candidates, encoder_hidden_states, runner, broadcast=False)
    same = all(np.allclose(a, b, rtol=0, atol=1e-3) for a, b in zip(fast, slow))
    if not same:
        log.warning("this decoder broadcasts the cross-attention cache differently; copying it per candidate")
    return same


def _run_errors() -> Tuple[type, ...]:
    from resonance.runtime.sessions import import_onnxruntime, ort_errors

    return ort_errors(import_onnxruntime())


def calibrate(scores: np.ndarray, options: PhraseOptions) -> Tuple[np.ndarray, float]:
    """(confidence per candidate, P(none of these)): softmax with the "none" pseudo-candidate."""
    z = np.append(np.asarray(scores, dtype=np.float64), options.none_score) / options.temperature
    z = np.exp(z - z.max())
    z /= z.sum()
    return z[:-1], float(z[-1])


def match(
    phrases: PhraseSet,
    scored: Sequence[int],
    logprobs: Sequence[np.ndarray],
    options: PhraseOptions,
    free_text: Optional[str] = None,
) -> PhraseMatch:
    """Rank the scored phrases and decide: the best phrase, or "none of these"."""
    if not scored:
        return empty_match(NO_PHRASES, len(phrases))
    scores = np.asarray([float(np.sum(lp)) for lp in logprobs]) / phrases.units[list(scored)]
    return decide([phrases.texts[i] for i in scored], scores, options, len(phrases), free_text)


def free_text_distance(free_text: str, phrase: str) -> float:
    """Share of characters in which the free transcription and a phrase differ (0 = the same words)."""
    from resonance.text import normalize_for_cer

    heard, listed = normalize_for_cer(free_text), normalize_for_cer(phrase)
    return edit_distance(heard, listed) / max(len(heard), len(listed), 1)


def decide(
    texts: Sequence[str],
    scores: np.ndarray,
    options: PhraseOptions,
    total: int,
    free_text: Optional[str] = None,
) -> PhraseMatch:
    """The decision from the scores and, when given, the free transcription (also what `resonance eval
    phrases` replays with fitted options)."""
    scores = np.asarray(scores, dtype=np.float64)
    confidence, none = calibrate(scores, options)
    order = np.argsort(-scores, kind="stable")
    candidates = tuple(
        PhraseCandidate(texts[i], float(confidence[i]), float(scores[i])) for i in order[: options.top_k]
    )
    best = candidates[0]
    distance = None if free_text is None else free_text_distance(free_text, best.text)
    unlike = distance is not None and options.max_distance is not None and distance > options.max_distance
    rejected = none >= options.max_none or unlike or not math.isfinite(best.score)
    return PhraseMatch(
        best=None if rejected else best.text,
        confidence=best.confidence,
        candidates=candidates,
        rejected=rejected,
        reason=NONE_OF_THESE if rejected else MATCHED,
        none_confidence=none,
        scored=len(texts),
        total=total,
        distance=distance,
    )


def summary(found: PhraseMatch) -> str:
    """One line for people: the phrase and its confidence, or why there is none."""
    if found.reason == MATCHED:
        return f"phrase: {found.best} ({found.confidence:.0%})"
    if found.reason == NO_PHRASES:
        return "phrase: - (the bundle has no phrase list; `resonance phrases add` makes one)"
    if found.reason == NO_SPEECH:
        return "phrase: - (no speech)"
    if found.candidates:
        closest = found.candidates[0]
        return f"phrase: none of these (closest: {closest.text}, {closest.confidence:.0%})"
    return "phrase: none of these"
