"""The runtime's one entry point: ``Transcriber(bundle).transcribe(audio, mode=...) -> TranscriptionResult``
(or ``Transcriber.for_device(bundle, "jetson-orin-nano")`` to take providers and threads from a device config).

``mode="free"`` transcribes; ``"phrases"`` picks one of the patient's known phrases or "none of these"
(runtime/phrases.py); ``"both"`` does both on one encoder pass. Loads a bundle once (manifest, two onnxruntime
sessions, tokenizer); every call keeps its state local, so one Transcriber serves concurrent requests
(onnxruntime's ``run`` is thread-safe).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from resonance.audio import AudioSource, load_audio
from resonance.constants import SAMPLE_RATE
from resonance.errors import ResonanceError
from resonance.runtime.board import Board, read_board
from resonance.runtime.bundle import Manifest, load_manifest
from resonance.runtime.chunking import window_spans
from resonance.runtime.decoding import DecodeOutput, DecodingOptions, WindowDecoding, WindowGuards
from resonance.runtime.device_config import DeviceConfig, load_device_config
from resonance.runtime.device_sessions import provider_specs, session_threads, warn_on_precision
from resonance.runtime.features import frames_for, log_mel_spectrogram
from resonance.runtime.merged_decoder import (
    IOBindingStepRunner,
    MergedDecoder,
    NumpyStepRunner,
    Step,
    StepRunner,
)
from resonance.runtime.phrases import (
    NO_PHRASES,
    NO_SPEECH,
    PhraseMatch,
    PhraseOptions,
    PhraseSet,
    broadcast_works,
    check_mode,
    empty_match,
    fitted_options,
    match,
    shortlist,
    teacher_forced_logprobs,
)
from resonance.runtime.sessions import DEFAULT_PROVIDERS, ProviderSpec, create_session, numpy_dtype
from resonance.runtime.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# The encoder's input length is rounded up to a multiple of this many mel frames when the bundle has a dynamic
# window (1 s): few distinct shapes keep TensorRT/CUDA from re-planning for every clip length.
DYNAMIC_BUCKET_FRAMES = 100


@dataclass(frozen=True)
class Segment:
    """One window's free transcription (faster-whisper's ``Segment``): where it lies in the audio, its text and
    how sure the decoder was (OpenAI's verbose_json, srt and vtt are written from these)."""

    start_s: float
    end_s: float
    text: str
    tokens: Tuple[int, ...]
    avg_logprob: float  # DecodeOutput.avg_logprob: summed log-probability / (tokens + 1)
    no_speech_prob: float  # P(no speech) of the window


@dataclass(frozen=True)
class TranscriptionResult:
    text: str
    language: str
    duration_s: float
    tokens: Tuple[int, ...] = ()
    # P(no speech) from the model; the lowest over the audio's windows. None when the model did not run
    # (empty audio, digital silence).
    no_speech_prob: Optional[float] = None
    # features_ms, encoder_ms, decoder_ms, [phrases_ms,] total_ms (wall clock of this call)
    timings: Dict[str, float] = field(default_factory=dict)
    mode: str = "free"
    # mode "phrases"/"both": the best known phrase or "none of these" (None in mode "free"). In mode "phrases"
    # ``text`` is the accepted phrase ("" when rejected), or the free transcription when there is no list.
    phrases: Optional[PhraseMatch] = None
    # The free transcription window by window, for windows the model decoded (none in mode "phrases" with a
    # list, or for digital silence).
    segments: Tuple[Segment, ...] = ()

    def to_json(self) -> Dict[str, Any]:
        """The result as every front end reports it (the server's endpoints, ``transcribe --json``, ``listen``):
        one home for the field names. Callers add their context (patient, file, time) beside it."""
        record: Dict[str, Any] = {
            "text": self.text,
            "mode": self.mode,
            "language": self.language,
            "duration_s": round(self.duration_s, 3),
            "latency_ms": round(self.timings.get("total_ms", 0.0), 1),
            "no_speech_prob": self.no_speech_prob,
            "timings": dict(self.timings),
        }
        if self.phrases is not None:
            record.update(self.phrases.to_json())
        return record


@dataclass(frozen=True)
class WindowResult:
    """What one window of audio produced, with its own timings."""

    decoded: Optional[DecodeOutput] = None  # its free transcription; None: not asked for, or digital silence
    match: Optional[PhraseMatch] = None  # the phrase board's answer (the first window of a matching call)
    no_speech_prob: Optional[float] = None  # None: the model did not run (digital silence)
    # features_ms, encoder_ms, decoder_ms (+ phrases_ms where phrases were scored); {} when the model did not run
    timings: Dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What one ``transcribe`` call computes, decided from (mode, phrase list) before any audio is decoded."""

    mode: str
    phrases: Optional[PhraseSet]  # matched on the first window; None: no matching (mode free, or no list)
    free_text: bool  # the reply's text is the free transcription of every window; False: the accepted phrase
    # Mode "phrases": the first window's free text is decoded too, to rank the shortlist of a list too long
    # to score whole, and to check the best phrase against (PhraseOptions.max_distance).
    decode_first: bool

    @classmethod
    def build(cls, mode: str, phrase_set: Optional[PhraseSet], popts: PhraseOptions) -> Plan:
        matching = phrase_set is not None and len(phrase_set) > 0
        # Without a list, mode "phrases" falls back to the free transcription.
        free_text = mode != "phrases" or not matching
        too_long = matching and popts.max_rows is not None and phrase_set.rows() > popts.max_rows
        witness = matching and popts.max_distance is not None
        return cls(mode, phrase_set if matching else None, free_text, bool(too_long or witness))

    def runs_window(self, index: int) -> bool:
        return self.free_text or index == 0

    def decodes_window(self, index: int) -> bool:
        return self.free_text or (index == 0 and self.decode_first)

    def phrases_for_window(self, index: int) -> Optional[PhraseSet]:
        return self.phrases if index == 0 else None

    def phrase_result(self, first: Optional[WindowResult]) -> Optional[PhraseMatch]:
        """The call's phrase answer: None in mode "free"; otherwise always a PhraseMatch (maybe empty)."""
        if self.mode == "free":
            return None
        if self.phrases is None:
            return empty_match(NO_PHRASES)
        if first is None or first.match is None:
            return empty_match(NO_SPEECH, len(self.phrases))  # no audio, or digital silence: no model run
        return first.match


class Transcriber:
    """Speech -> text with one exported bundle."""

    def __init__(
        self,
        bundle_dir: Union[str, Path],
        providers: Sequence[ProviderSpec] = DEFAULT_PROVIDERS,
        threads: Optional[int] = None,
        options: Union[DecodingOptions, Mapping[str, Any], None] = None,
        verify: bool = True,
        optimization: str = "all",
        phrase_options: Union[PhraseOptions, Mapping[str, Any], None] = None,
        io_binding: Optional[bool] = None,
        spin_wait: bool = False,
    ) -> None:
        """``io_binding``: keep the encoder's output and the KV cache where the model runs (onnxruntime's
        IOBinding) instead of copying them to numpy at every step; None = on a GPU provider, where the copies
        cost most (`resonance gpu-check` times both). ``spin_wait``: onnxruntime's busy-waiting worker threads
        (off: they slow the other session and anything else on the CPU; runtime/sessions.py session_options)."""
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = load_manifest(self.bundle_dir, verify=verify)
        self.board: Board = _board_or_recorded(self.bundle_dir, self.manifest)  # matched by default
        self.options = DecodingOptions.coerce(options)
        # The bundle's fitted calibration (manifest.phrase_calibration), then the caller's changes.
        fitted = fitted_options(self.manifest.phrase_calibration)
        self.phrase_options = PhraseOptions.coerce(phrase_options, fitted)
        files = self.manifest.files
        self.encoder = create_session(
            self.bundle_dir / files["encoder"]["path"], providers, threads, optimization, spin_wait
        )
        self.decoder = create_session(
            self.bundle_dir / files["decoder"]["path"], providers, threads, optimization, spin_wait
        )
        if self.encoder.get_providers() != self.decoder.get_providers():
            log.warning(
                "encoder runs on %s but decoder on %s",
                self.encoder.get_providers(),
                self.decoder.get_providers(),
            )
        self.tokenizer = Tokenizer(self.bundle_dir / files["tokenizer"]["path"], self.manifest.tokens.eot)
        self.merged_decoder = MergedDecoder(self.decoder, self.manifest.tokens, self.manifest.model)
        self._encoder_in = self.encoder.get_inputs()[0]
        self._encoder_out = self.encoder.get_outputs()[0].name
        self._device_id = _device_id(providers)
        self.io_binding = self.on_gpu if io_binding is None else bool(io_binding)
        self._bound_to = "cuda" if self.on_gpu else "cpu"  # where bound outputs live
        audio = self.manifest.audio
        self.window_samples = round(audio.window_seconds * audio.sample_rate)
        self.window_frames = frames_for(audio.window_seconds, audio.sample_rate, audio.hop_length)
        self._phrase_sets: Dict[Tuple[str, ...], PhraseSet] = {}
        self._broadcast: Optional[bool] = None  # phrase scoring: see phrases.broadcast_works (checked once)

    @classmethod
    def for_device(
        cls, bundle_dir: Union[str, Path], device: Any = "pc-cpu", warn: bool = True, **kwargs: Any
    ) -> Transcriber:
        """A Transcriber set up as ``device`` says (a device_configs/ name, a YAML path or a DeviceConfig): its
        providers in order, threads and decoding options, with a warning when the bundle was made for another
        precision or CPU. ``kwargs`` go to the constructor and win over the config."""
        config = device if isinstance(device, DeviceConfig) else load_device_config(device)
        kwargs.setdefault("threads", session_threads(config))
        kwargs.setdefault("options", config.decoding)
        transcriber = cls(bundle_dir, providers=provider_specs(config, Path(bundle_dir)), **kwargs)
        if warn:
            warn_on_precision(Path(bundle_dir).name, transcriber.manifest, config)
        return transcriber

    def with_board(self, board: Board) -> Transcriber:
        """This transcriber with another phrase board, sharing its sessions (a caregiver's edit, hot-reloaded)."""
        other = copy.copy(self)
        other.board = board
        return other

    @property
    def providers(self) -> List[str]:
        """The execution providers onnxruntime really uses (after any fallback)."""
        return list(self.encoder.get_providers())

    @property
    def on_gpu(self) -> bool:
        return self.decoder.get_providers()[0] in _GPU_PROVIDERS

    def transcribe(
        self,
        audio: AudioSource,
        options: Union[DecodingOptions, Mapping[str, Any], None] = None,
        sample_rate: Optional[int] = None,
        mode: str = "free",
        phrases: Optional[Sequence[str]] = None,
        phrase_options: Union[PhraseOptions, Mapping[str, Any], None] = None,
    ) -> TranscriptionResult:
        """Transcribe a path, the bytes of an audio file, or samples (``sample_rate`` is the array's rate).

        Audio longer than the bundle's window is cut at a pause near each window's end (``window_spans``) and
        the pieces' texts are joined; capping the length (a server's request limit) is the caller's job. ``mode`` "phrases"/"both" also matches the
        audio against ``phrases`` (default: the bundle's board); phrases are matched on the first window.
        """
        check_mode(mode)
        opts = self.options if options is None else DecodingOptions.coerce(options)
        popts = PhraseOptions.coerce(phrase_options, self.phrase_options)
        start = time.perf_counter()
        samples = load_audio(audio, SAMPLE_RATE, source_rate=sample_rate)
        plan = Plan.build(mode, self.phrase_set(phrases) if mode != "free" else None, popts)
        decoding = WindowDecoding(self.merged_decoder, opts)
        windows: List[WindowResult] = []
        spans = window_spans(samples, self.window_samples, SAMPLE_RATE)
        for index, (begin, end) in enumerate(spans):
            if not plan.runs_window(index):
                break
            windows.append(self._transcribe_window(samples[begin:end], decoding, plan, index, popts))
        tokens = [token for w in windows if w.decoded is not None for token in w.decoded.tokens]
        text = self._text(tokens, opts)
        segments = tuple(
            self._segment(w.decoded, begin, end, opts)
            for w, (begin, end) in zip(windows, spans)
            if w.decoded is not None and w.decoded.tokens and plan.free_text
        )
        found = plan.phrase_result(windows[0] if windows else None)
        if not plan.free_text:
            text, tokens = found.best or "", []  # mode "phrases": the answer is the accepted phrase
        timings = {"features_ms": 0.0, "encoder_ms": 0.0, "decoder_ms": 0.0}
        for w in windows:
            for key, ms in w.timings.items():
                timings[key] = timings.get(key, 0.0) + ms
        timings["total_ms"] = (time.perf_counter() - start) * 1000.0
        no_speech = [w.no_speech_prob for w in windows if w.no_speech_prob is not None]
        return TranscriptionResult(
            text=text,
            language=self.manifest.language,
            duration_s=samples.size / SAMPLE_RATE,
            tokens=tuple(tokens),
            no_speech_prob=min(no_speech) if no_speech else None,
            timings={k: round(v, 2) for k, v in timings.items()},
            mode=mode,
            phrases=found,
            segments=segments,
        )

    def _text(self, tokens: Sequence[int], opts: DecodingOptions) -> str:
        text = self.tokenizer.decode(list(tokens))
        if opts.to_simplified and text:
            from resonance.text import to_simplified

            text = to_simplified(text)
        return text

    def _segment(self, decoded: DecodeOutput, start: int, end: int, opts: DecodingOptions) -> Segment:
        return Segment(
            start_s=start / SAMPLE_RATE,
            end_s=end / SAMPLE_RATE,
            text=self._text(decoded.tokens, opts),
            tokens=decoded.tokens,
            avg_logprob=decoded.avg_logprob,
            no_speech_prob=decoded.no_speech_prob,
        )

    def match_phrases(
        self,
        audio: AudioSource,
        phrases: Optional[Sequence[str]] = None,
        top_k: Optional[int] = None,
        sample_rate: Optional[int] = None,
    ) -> PhraseMatch:
        """Shorthand for ``transcribe(audio, mode="phrases", ...).phrases``."""
        popts = self.phrase_options
        if top_k is not None:
            from dataclasses import replace

            popts = replace(popts, top_k=top_k)
        result = self.transcribe(
            audio, sample_rate=sample_rate, mode="phrases", phrases=phrases, phrase_options=popts
        )
        return result.phrases or empty_match(NO_PHRASES)  # mode "phrases" always sets it

    def phrase_set(self, phrases: Optional[Sequence[str]] = None) -> PhraseSet:
        """The list prepared for scoring (tokenised once per distinct list): ``phrases`` or the board's."""
        key = tuple(self.board.texts if phrases is None else phrases)
        prepared = self._phrase_sets.get(key)
        if prepared is None:
            budget = self.merged_decoder.max_new_positions - 1  # the phrase's tokens, then eot
            prepared = PhraseSet.build(key, self.tokenizer, budget)
            # A few lists at most (the bundle's, a client's): no unbounded cache.
            if len(self._phrase_sets) >= 8:
                self._phrase_sets.clear()
            self._phrase_sets[key] = prepared
        return prepared

    def _transcribe_window(
        self, window: np.ndarray, decoding: WindowDecoding, plan: Plan, index: int, popts: PhraseOptions
    ) -> WindowResult:
        """Decode (and on the first window, match phrases on) at most ``window_seconds`` of audio.

        The free transcription and the phrase scoring share the encoder pass and the decoder's first step.
        """
        guards = WindowGuards.for_window(window, SAMPLE_RATE, decoding.options)
        if guards.skip:
            return WindowResult()  # digital silence: the model does not run
        t0 = time.perf_counter()
        features = self.features(window)
        t1 = time.perf_counter()
        runner = self.step_runner()
        hidden = self._encode(features)
        t2 = time.perf_counter()
        primed = self.merged_decoder.prime(hidden, runner)
        decoded: Optional[DecodeOutput] = None
        if plan.decodes_window(index):
            decoded = decoding.run(primed, hidden, runner, guards)
            if decoded.stopped_by == "repetition":
                log.info("decoding stopped by the repetition guard after %d tokens", len(decoded.tokens))
            no_speech_prob = decoded.no_speech_prob
        else:
            no_speech_prob = self.merged_decoder.no_speech_prob(primed)
        t3 = time.perf_counter()
        timings = {"features_ms": (t1 - t0) * 1000.0, "encoder_ms": (t2 - t1) * 1000.0}
        timings["decoder_ms"] = (t3 - t2) * 1000.0
        found: Optional[PhraseMatch] = None
        phrase_set = plan.phrases_for_window(index)
        if phrase_set is not None:
            if guards.no_speech(no_speech_prob):
                found = empty_match(NO_SPEECH, len(phrase_set))  # quiet, and the model hears nobody
            else:
                free_text = self.tokenizer.decode(decoded.tokens) if decoded is not None else None
                found = self._match(hidden, primed, runner, phrase_set, popts, free_text)
            timings["phrases_ms"] = (time.perf_counter() - t3) * 1000.0
        return WindowResult(decoded, found, no_speech_prob, timings)

    def _match(
        self,
        hidden,
        primed: Step,
        runner: StepRunner,
        phrase_set: PhraseSet,
        popts: PhraseOptions,
        free_text: Optional[str],
    ) -> PhraseMatch:
        first = primed.logits[
            0, -1
        ]  # logits after the prompt (numpy from every runner): rank by P(first token)
        first_ids = np.asarray([tokens[0] for tokens in phrase_set.tokens], dtype=np.int64)
        chosen = shortlist(phrase_set, free_text, first[first_ids], popts.max_rows)
        if self._broadcast is None:
            self._broadcast = broadcast_works(self.merged_decoder, primed, hidden, runner)
        logprobs = teacher_forced_logprobs(
            self.merged_decoder,
            primed,
            [phrase_set.tokens[i] for i in chosen],
            hidden,
            runner,
            popts.batch_memory_mb,
            self._broadcast,
        )
        return match(phrase_set, chosen, logprobs, popts, free_text)

    def features(self, window: np.ndarray) -> np.ndarray:
        """(1, n_mels, frames) encoder input for one window of audio, in the encoder's dtype."""
        audio = self.manifest.audio
        seconds = audio.window_seconds
        if audio.dynamic_window:
            # Encode only the audio's length, rounded up to a bucket; the encoder slices its positions to match.
            frames = frames_for(window.size / audio.sample_rate, audio.sample_rate, audio.hop_length)
            buckets = -(-max(frames, 1) // DYNAMIC_BUCKET_FRAMES) * DYNAMIC_BUCKET_FRAMES
            seconds = min(buckets, self.window_frames) * audio.hop_length / audio.sample_rate
        mel = log_mel_spectrogram(
            window, seconds, audio.n_mels, audio.sample_rate, audio.n_fft, audio.hop_length
        )
        return mel[np.newaxis].astype(numpy_dtype(self._encoder_in.type), copy=False)

    def _encode(self, features: np.ndarray):
        if not self.io_binding:
            return self.encoder.run([self._encoder_out], {self._encoder_in.name: features})[0]
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(self._encoder_in.name, features)
        binding.bind_output(self._encoder_out, self._bound_to, self._device_id)
        self.encoder.run_with_iobinding(binding)
        return binding.get_outputs()[0]  # an OrtValue on the GPU, bound straight into the decoder

    def step_runner(self) -> StepRunner:
        """How this call runs decoder steps: with IOBinding (the cache stays where the model runs; by default on
        a GPU), else numpy."""
        if self.io_binding:
            return IOBindingStepRunner(self.decoder, self._bound_to, self._device_id)
        return NumpyStepRunner(self.decoder)


def _device_id(providers: Sequence[ProviderSpec]) -> int:
    for spec in providers:
        if not isinstance(spec, str) and spec[0] in _GPU_PROVIDERS:
            return int(spec[1].get("device_id", 0))
    return 0


def _board_or_recorded(bundle_dir: Path, manifest: Manifest) -> Board:
    """The bundle's phrase board; a hand-edited board.json gone wrong is logged and the recorded phrases used
    (recognition must not stop over it; `resonance phrases list` shows the error)."""
    try:
        return read_board(bundle_dir, manifest)
    except ResonanceError as exc:
        log.error("phrase board of %s unreadable, matching its recorded phrases only: %s", bundle_dir, exc)
        return Board(tuple(manifest.phrases or ()))
