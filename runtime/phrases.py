"""Phrase-board mode: which of the patient's known phrases was said, or "none of these".

Most of what a person with cerebral palsy says to a caregiver is one of a few dozen everyday phrases, the ones
recorded for training (the bundle's ``manifest.phrases``). Picking one of them is far more reliable than free
transcription, provided an unknown request is not forced onto a known phrase.

How a phrase is scored, with the same model that transcribes:

* The audio is encoded once and the decoder's first step runs once on the SOT prompt (shared with the free
  transcription). Its logits give P(first token) of every phrase; its outputs hold the prompt's self-attention
  cache and the audio's cross-attention keys/values.
* Every candidate is teacher-forced in one batched call on the decoder's cache branch: the first-step cache
  tiled over the batch, ``input_ids`` = the phrase's tokens (right-padded; causal attention keeps padding out
  of the real positions). Position j's logits give log p(token j+1), the last one log p(end of text).
* score = (sum of those log-probabilities) / (characters + 1): a mean per spoken character. Per *token* would
  favour phrases whose rare characters the byte-level BPE splits into several tokens, all near-certain after
  the first one (measured: top-1 92 % per token vs 94 % per character on speaker A, 126 phrases).
* Candidates: every phrase when they fit ``max_rows`` decoder positions; otherwise a shortlist, nearest to the
  free transcription first (character edit distance, ties by P(first token)). Scoring is one big matrix
  product per position and the 51865-way output layer dominates it, so the row budget is what keeps
  mode=both close to mode=free. On speaker A the shortlist of 16 phrases never lost the right phrase that
  exhaustive scoring found.
* Confidence: a softmax over the candidates' scores and a "none of these" pseudo-candidate with a fixed score,
  both divided by a temperature (:class:`PhraseOptions`; fitted by ``resonance eval phrases``). The
  confidences and P(none) sum to 1; the best phrase is rejected when its confidence is below
  ``min_confidence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from resonance.errors import ResonanceError

MODES = ("free", "phrases", "both")
# Why a match has no accepted phrase (PhraseMatch.reason).
MATCHED = "matched"
NONE_OF_THESE = "none_of_these"
NO_PHRASES = "no_phrases"
NO_SPEECH = "no_speech"


@dataclass(frozen=True)
class PhraseOptions:
    top_k: int = 3  # candidates returned, best first
    # Calibration (fitted on speaker A's personalised whisper-base, take2, by `resonance eval phrases`):
    # confidence = softmax over {score / temperature} and {none_score / temperature}.
    temperature: float = 0.235
    none_score: float = -1.17  # "none of these" acts like a phrase scoring this many nats per character
    min_confidence: float = 0.5  # the best phrase below this confidence is rejected ("none of these")
    # Decoder positions scored per utterance (phrase tokens, summed over candidates); None: every phrase.
    max_rows: Optional[int] = 96
    # Cap on the tiled attention cache of one batched decoder call (it holds the audio's cross-attention
    # keys/values once per candidate: 6 MB for whisper-base with a 5 s window, 37 MB with 30 s).
    batch_memory_mb: float = 256.0

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ResonanceError(f"top_k must be >= 1, got {self.top_k}", "use e.g. 3")
        if not self.temperature > 0:
            raise ResonanceError(f"temperature must be positive, got {self.temperature}", "use e.g. 0.25")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ResonanceError("min_confidence is a probability in [0, 1]", "use e.g. 0.5")
        if self.max_rows is not None and self.max_rows < 1:
            raise ResonanceError("max_rows must be >= 1 or None (score every phrase)", "use e.g. 96")
        if not self.batch_memory_mb > 0:
            raise ResonanceError("batch_memory_mb must be positive", "use e.g. 256")

    @classmethod
    def coerce(cls, value: Union[PhraseOptions, Mapping[str, Any], None]) -> PhraseOptions:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ResonanceError(f"unknown phrase option(s) {unknown}", f"known options: {sorted(known)}")
        return cls(**dict(value))


@dataclass(frozen=True)
class PhraseCandidate:
    text: str
    confidence: float  # calibrated probability that this phrase was said, in [0, 1]
    score: float  # mean log-probability per character (end of text included); higher is better


@dataclass(frozen=True)
class PhraseMatch:
    best: Optional[str]  # the accepted phrase; None when rejected or there is no list
    confidence: float  # the top candidate's confidence (0.0 without candidates)
    candidates: Tuple[PhraseCandidate, ...]  # top-k, best first
    rejected: bool  # True: "none of these" (or nothing to match)
    reason: str  # matched, none_of_these, no_phrases, no_speech
    none_confidence: float = 0.0  # P("none of these")
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


def spoken_length(text: str) -> int:
    """Characters that are said (no spaces or punctuation): the unit scores are normalised by."""
    from resonance.text import strip_punctuation

    return max(1, len(strip_punctuation(text)))


@dataclass(frozen=True)
class PhraseSet:
    """A phrase list ready to score: token ids and normalisation lengths, computed once per list."""

    texts: Tuple[str, ...]
    tokens: Tuple[Tuple[int, ...], ...]
    units: np.ndarray  # characters + 1 (end of text), per phrase
    normalized: Tuple[str, ...]  # for the edit distance to the free transcription

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
        units = np.asarray([spoken_length(t) + 1 for t in texts], dtype=np.float64)
        return cls(tuple(texts), tuple(tokens), units, tuple(normalize_for_cer(t) for t in texts))

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, indices: Sequence[int]) -> int:
        return sum(len(self.tokens[i]) for i in indices)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two short strings (characters)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def shortlist(
    phrases: PhraseSet, free_text: Optional[str], first_logprobs: np.ndarray, max_rows: Optional[int]
) -> List[int]:
    """Indices of the phrases to score: all when they fit ``max_rows``, else the nearest to the free text.

    Nearest = smallest character edit distance to the free transcription (relative to the longer of the two),
    ties broken by the model's P(first token); phrases are taken in that order while their tokens fit.
    """
    everything = list(range(len(phrases)))
    if max_rows is None or phrases.rows(everything) <= max_rows:
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
    total = np.exp(logits - top).sum(axis=-1, dtype=np.float64)
    picked = np.take_along_axis(logits, index[..., np.newaxis], axis=-1)[..., 0]
    return picked.astype(np.float64) - top[..., 0].astype(np.float64) - np.log(total)


def to_host(value) -> np.ndarray:
    """numpy for an OrtValue (IOBinding on a GPU) or an array."""
    return value if isinstance(value, np.ndarray) else value.numpy()


def teacher_forced_logprobs(
    greedy,
    primed: Tuple[Any, Dict[str, Any]],
    candidates: Sequence[Sequence[int]],
    encoder_hidden_states,
    runner,
    batch_memory_mb: float = 256.0,
) -> List[np.ndarray]:
    """log p(token) of each candidate's tokens and end of text, given the audio: one array per candidate.

    ``primed`` is ``greedy.prime(...)``: the SOT prompt's logits and presents. Candidates run in batches on the
    cache branch of the merged decoder (``input_ids`` of several positions; checked equal to step-by-step
    decoding in tests/test_phrases.py), longest-first order grouped so padding stays small.
    """
    eot = greedy.tokens.eot
    logits0, presents = primed
    first = np.asarray(to_host(logits0))[0, -1]
    cache = {name: to_host(value) for name, value in presents.items()}
    row_bytes = max(1, sum(value.nbytes for value in cache.values()))
    batch = max(1, int(batch_memory_mb * 1e6 // row_bytes))
    order = sorted(range(len(candidates)), key=lambda i: len(candidates[i]))
    results: List[Optional[np.ndarray]] = [None] * len(candidates)
    first_ids = np.asarray([c[0] for c in candidates], dtype=np.int64)
    first_lp = log_softmax_at(np.broadcast_to(first, (len(candidates), first.size)), first_ids)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        width = max(len(candidates[i]) for i in chunk)
        ids = np.full((len(chunk), width), eot, dtype=np.int64)
        targets = np.full((len(chunk), width), eot, dtype=np.int64)
        for row, i in enumerate(chunk):
            tokens = list(candidates[i])
            ids[row, : len(tokens)] = tokens
            targets[row, : len(tokens) - 1] = tokens[1:]  # position j predicts token j+1, the last one eot
        feeds: Dict[str, Any] = {name: np.repeat(value, len(chunk), axis=0) for name, value in cache.items()}
        feeds["input_ids"] = ids
        # The cache branch reads the audio only through the cross-attention cache; this input is unused there.
        feeds["encoder_hidden_states"] = encoder_hidden_states
        feeds["use_cache_branch"] = np.asarray([True])
        logits, _ = runner.step(feeds, greedy.present_to_past)
        logprobs = log_softmax_at(logits, targets)
        for row, i in enumerate(chunk):
            n = len(candidates[i])
            results[i] = np.concatenate([[first_lp[i]], logprobs[row, :n]])
    return [r for r in results if r is not None]


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
) -> PhraseMatch:
    """Rank the scored phrases and decide: the best phrase, or "none of these"."""
    if not scored:
        return empty_match(NO_PHRASES, len(phrases))
    scores = np.asarray([float(np.sum(lp)) for lp in logprobs]) / phrases.units[list(scored)]
    confidence, none = calibrate(scores, options)
    order = np.argsort(-scores, kind="stable")
    candidates = tuple(
        PhraseCandidate(phrases.texts[scored[i]], float(confidence[i]), float(scores[i]))
        for i in order[: options.top_k]
    )
    best = candidates[0]
    rejected = best.confidence < options.min_confidence or not math.isfinite(best.score)
    return PhraseMatch(
        best=None if rejected else best.text,
        confidence=best.confidence,
        candidates=candidates,
        rejected=rejected,
        reason=NONE_OF_THESE if rejected else MATCHED,
        none_confidence=none,
        scored=len(scored),
        total=len(phrases),
    )
