"""`resonance gpu-check` (registration only: torch, onnxruntime-gpu and faster-whisper load when it runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resonance.cli_common import add_command

EXAMPLES = """\
  resonance gpu-check                       # on a CUDA machine (make gpu-check); elsewhere one line, exit 0
  resonance gpu-check --steps 60 --clips 40 --out runs/gpu-check-long
  resonance gpu-check --allow-cpu --base-model models/tiny --steps 2 --clips 2   # every step, on the CPU
installs the [dev] extra and onnxruntime-gpu when missing, trains on the GPU and the CPU for the same steps,
exports an fp16 bundle (parity on the CUDA provider), times the runtime with and without IOBinding (and on
TensorRT) and against PyTorch fp16 and faster-whisper float16. Results: OUT/report.json and table.txt.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "gpu-check",
        "run every CUDA path end to end on this machine's GPU and time it against PyTorch and faster-whisper",
        EXAMPLES,
        _run,
    )
    p.add_argument(
        "--base-model",
        default="pypi:whisper-base",
        help="the model trained, exported and timed (default %(default)s: offline)",
    )
    p.add_argument("--steps", type=int, default=30, help="training steps on each device (default 30)")
    p.add_argument(
        "--clips", type=int, default=20, help="clips timed per runtime variant and engine (default 20)"
    )
    p.add_argument("--warmup", type=int, default=2, help="clips run once before timing (default 2)")
    p.add_argument("--threads", type=int, help="CPU threads for CPU training and engines (default: up to 8)")
    p.add_argument("--data", type=Path, help="training clips (default: the built-in demo phrases, take1)")
    p.add_argument("--eval-data", type=Path, help="CER and timing clips (default: the demo's take2)")
    p.add_argument(
        "--out", type=Path, default=Path("runs/gpu-check"), help="results folder (default runs/gpu-check)"
    )
    p.add_argument(
        "--allow-cpu",
        action="store_true",
        help="no GPU: run every step on the CPU instead of stopping (tests the script itself)",
    )
    p.add_argument(
        "--no-install", action="store_true", help="don't pip install the [dev] extra or onnxruntime-gpu"
    )


def _run(args: argparse.Namespace) -> int:
    from resonance.bench.gpu_check import GpuCheckConfig, main

    options = dict(
        base_model=args.base_model,
        data=args.data,
        eval_data=args.eval_data,
        steps=args.steps,
        clips=args.clips,
        warmup=args.warmup,
        allow_cpu=args.allow_cpu,
        install=not args.no_install,
        out=args.out,
    )
    if args.threads:
        options["threads"] = args.threads
    return main(GpuCheckConfig(**options), sys.argv[1:])
