"""`resonance gpu-check` (`make gpu-check`): every CUDA path, run end to end on a GPU and measured side by side.

The CUDA paths (training in bf16/fp16, fp16 bundles, the CUDA and TensorRT providers, IOBinding) were written
on CPUs. This is the one command to run the day a GPU is at hand. ``--allow-cpu`` runs every step on the CPU
with the same code, which is what tests/test_gpu_check.py does with a tiny random Whisper, so it cannot rot
before then. On a machine without an NVIDIA GPU it says so in one line and exits 0.

Steps (each a group of the table and a key of ``<out>/report.json``):

1. install: the project's ``[dev]`` extra, and onnxruntime-gpu in place of onnxruntime (idempotent: pip runs
   only for what is missing, then the command restarts itself so the new packages are the ones imported);
2. train: the default recipe on the built-in demo phrases for the same steps on the GPU (bf16 where supported)
   and on the CPU: final loss and CER side by side, samples/s and their ratio;
3. export: the GPU-trained adapter to an fp16 bundle, its parity with PyTorch checked on the CUDA provider;
4. runtime: that bundle on CUDA with IOBinding and without, and on TensorRT when onnxruntime has it: latency,
   and whether each gives the text CUDA + IOBinding gives;
5. engines: the base model as an fp16 bundle on CUDA (IOBinding) against transformers' PyTorch fp16
   ``generate`` and faster-whisper float16 on CUDA, same clips, one process each, taking turns clip by clip
   (``resonance bench``'s engine workers).

"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from resonance.constants import OFFLINE_BASE_MODEL
from resonance.errors import ResonanceError

log = logging.getLogger(__name__)

CUDA_EP, TENSORRT_EP, CPU_EP = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"
REPORT = "report.json"
# What the steps import; any of them missing means the [dev] extra is not installed.
NEEDED_MODULES = ("torch", "transformers", "peft", "optimum", "faster_whisper", "onnxruntime")
ROOT = Path(__file__).resolve().parents[1]  # a source checkout: `pip install -e .[dev]` there


@dataclass(frozen=True)
class GpuCheckConfig:
    base_model: str = OFFLINE_BASE_MODEL  # what is trained, exported and timed (pypi:whisper-base: offline)
    data: Optional[Path] = None  # training clips; default: the built-in demo phrases (take1)
    eval_data: Optional[Path] = None  # CER and timing clips; default: the same phrases said again (take2)
    steps: int = 30  # training steps, the same on each device (8 clips each)
    clips: int = 20  # clips timed per runtime variant and engine
    warmup: int = 2  # clips run once before timing
    threads: int = field(default_factory=lambda: min(os.cpu_count() or 1, 8))  # CPU training and engines
    allow_cpu: bool = False  # no GPU: run every step on the CPU instead of saying so and stopping
    install: bool = True  # step 1; off after the restart that follows an install
    out: Path = Path("runs/gpu-check")

    def __post_init__(self) -> None:
        if self.steps < 1 or self.clips < 1 or self.warmup < 0 or self.threads < 1:
            raise ResonanceError(
                "--steps, --clips and --threads must be >= 1, --warmup >= 0", "e.g. --steps 30 --clips 20"
            )


# -- device and packages ------------------------------------------------------------------------------------


def find_device(allow_cpu: bool, machine: Any = None) -> Tuple[Optional[str], str]:
    """("cuda", the GPUs) when the NVIDIA driver sees a GPU; ("cpu", why) with --allow-cpu; else (None, why).

    Asks the driver (``resonance doctor``'s check, no torch needed): torch may not even be installed yet.
    """
    from resonance.runtime.doctor.machine import Machine

    driver = (machine or Machine()).nvidia_driver()
    if driver.found and driver.devices:
        return "cuda", ", ".join(driver.devices)
    why = driver.error or "the NVIDIA driver sees no GPU"
    if allow_cpu:
        return "cpu", f"no GPU ({why}); --allow-cpu: every step on the CPU"
    return None, f"no NVIDIA GPU here ({why})"


def install_plan(
    importable: Sequence[str],
    onnxruntime_dists: Sequence[str],
    torch_has_cuda: Optional[bool],
    editable: bool,
) -> List[List[str]]:
    """The pip commands (arguments after ``python -m pip``) that make a CUDA machine ready; [] when it is.

    ``importable``: which of NEEDED_MODULES import; ``onnxruntime_dists``: installed onnxruntime* distributions;
    ``torch_has_cuda``: torch.version.cuda is set (None: torch not installed).
    """
    plan: List[List[str]] = []
    if any(m not in importable for m in NEEDED_MODULES):
        target = f"{ROOT}[dev]" if editable else "resonance-asr[dev]"
        constraints = ["-c", str(ROOT / "constraints.txt")] if editable else []
        plan.append(["install", *constraints, *(["-e"] if editable else []), target])
    # [dev] brings the CPU onnxruntime; both wheels share one folder, so the CPU one goes first.
    if "onnxruntime" in onnxruntime_dists or plan:
        plan.append(["uninstall", "-y", "onnxruntime"])
    if "onnxruntime-gpu" not in onnxruntime_dists or plan:
        plan.append(["install", "--force-reinstall", "--no-deps", "onnxruntime-gpu"])
    if torch_has_cuda is False:  # a +cpu build; PyPI's Linux x86_64 torch is the CUDA one
        plan.append(["install", "--force-reinstall", "torch"])
    return plan


def ensure_packages() -> Dict[str, Any]:
    """Run :func:`install_plan` on this machine; the caller restarts when anything ran."""
    from resonance.runtime.doctor.machine import Machine, normalize

    importable = [m for m in NEEDED_MODULES if importlib.util.find_spec(m) is not None]
    dists = [n for n in Machine().distributions() if n.startswith("onnxruntime")]
    torch_cuda: Optional[bool] = None
    if "torch" in importable:
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.version.cuda or '')"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        torch_cuda = bool(probe.stdout.strip())
    editable = (ROOT / "pyproject.toml").is_file()
    plan = install_plan(importable, [normalize(d) for d in dists], torch_cuda, editable)
    for args in plan:
        log.info("gpu-check: pip %s", " ".join(args))
        proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ResonanceError(
                f"pip {' '.join(args)} failed: {(proc.stdout + proc.stderr).strip()[-800:]}",
                "run that pip command yourself to see why, then make gpu-check again",
            )
    return {"status": "installed" if plan else "ready", "pip": [" ".join(a) for a in plan]}


# -- the steps ----------------------------------------------------------------------------------------------


def train_both(config: GpuCheckConfig, device: str, work: Path) -> List[Dict[str, Any]]:
    """The same training (the default recipe, steps, data, seed) on ``device`` and on the CPU."""
    import torch

    from resonance.train.config import TrainConfig
    from resonance.train.trainer import train

    data, eval_data = _data(config)
    generic: Dict[str, Any] = {}  # the generic model's transcripts of eval_data, decoded once
    rows = []
    for run_on in (device, "cpu"):
        cuda = run_on == "cuda"
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
        train_config = TrainConfig(
            data=str(data),
            eval_data=str(eval_data),
            out=str(work / f"adapter-{run_on}-{len(rows)}"),
            base_model=config.base_model,
            max_steps=config.steps,
            device=run_on,
            precision=precision,
            threads=config.threads,
            val_fraction=0.0,  # the same steps on both devices: no early stop, CER on eval_data
            seed=0,
            force=True,
        )
        report = train(train_config, generic_cache=generic)
        rows.append(
            {
                "device": run_on,
                "precision": precision,
                "adapter": train_config.out,
                "steps": report["steps"],
                "final_loss": round(report["history"]["loss"][-1][1], 4)
                if report["history"]["loss"]
                else None,
                "cer_before": round(report["cer_before"], 4),
                "cer_after": round(report["cer_after"], 4),
                "samples_per_second": report["samples_per_second"],
                "train_seconds": report["train_seconds"],
            }
        )
    fast, cpu = rows[0]["samples_per_second"], rows[1]["samples_per_second"]
    rows[0]["speedup_vs_cpu"] = round(fast / cpu, 2) if fast and cpu else None
    return rows


def export_fp16(config: GpuCheckConfig, adapter: Optional[str], out: Path, providers: Sequence[str]) -> Dict:
    """An fp16 bundle (of the adapter, or of the base model), parity with PyTorch checked on ``providers``."""
    from resonance.export.onnx_export import export_bundle
    from resonance.runtime.bundle import load_manifest

    started = time.perf_counter()
    export_bundle(
        config.base_model if adapter is None else None,
        out,
        adapter=Path(adapter) if adapter else None,
        quantize="fp16",
        force=True,
        parity_providers=providers,
    )
    parity = load_manifest(out).parity
    return {
        "bundle": str(out),
        "seconds": round(time.perf_counter() - started, 1),
        "parity_passed": parity.get("passed"),
        "parity_cer": parity.get("cer"),
        "parity_providers": parity.get("providers"),
        "tokens_identical": f"{parity.get('tokens_identical')}/{parity.get('clips')}",
    }


def runtime_variants(device: str, available: Sequence[str]) -> List[Tuple[str, List[Any], bool]]:
    """(label, providers, io_binding) for each way the runtime can run the bundle here."""
    if device != "cuda":
        return [("CPU + IOBinding", [CPU_EP], True), ("CPU, no IOBinding", [CPU_EP], False)]
    variants: List[Tuple[str, List[Any], bool]] = [
        ("CUDA + IOBinding", [CUDA_EP, CPU_EP], True),
        ("CUDA, no IOBinding", [CUDA_EP, CPU_EP], False),
    ]
    if TENSORRT_EP in available:
        variants.append(("TensorRT + IOBinding", [TENSORRT_EP, CUDA_EP, CPU_EP], True))
    return variants


def time_runtime(config: GpuCheckConfig, bundle: Path, device: str) -> List[Dict[str, Any]]:
    """Each variant on the same clips, in turn clip by clip; texts compared with the first variant's."""
    import onnxruntime

    from resonance.audio import load_audio
    from resonance.bench.run import choose_clips
    from resonance.runtime.decoding import GREEDY
    from resonance.runtime.device_config import load_device_config
    from resonance.runtime.device_sessions import provider_specs
    from resonance.runtime.transcriber import Transcriber

    clips = choose_clips(_data(config)[1], config.clips)
    audios = [load_audio(c.path) for c in clips]
    variants = runtime_variants(device, onnxruntime.get_available_providers())
    # TensorRT as the runtime runs it (its engine cache folder): pc-cuda with TensorRT in front
    trt_config = load_device_config("pc-cuda").replace(providers=[TENSORRT_EP, CUDA_EP, CPU_EP])
    loaded = []
    for label, providers, io_binding in variants:
        if TENSORRT_EP in providers:
            providers = provider_specs(trt_config, bundle)
        # Greedy, as the PyTorch path it is timed against (the served default is 4 beams).
        transcriber = Transcriber(bundle, providers, config.threads, GREEDY, io_binding=io_binding)
        for audio in audios[: config.warmup]:
            transcriber.transcribe(audio)
        loaded.append((label, transcriber, {"latencies_ms": [], "texts": []}))
    for i, audio in enumerate(audios):
        for k in range(len(loaded)):
            _, transcriber, result = loaded[(i + k) % len(loaded)]
            t0 = time.perf_counter()
            text = transcriber.transcribe(audio).text
            result["latencies_ms"].append((time.perf_counter() - t0) * 1000.0)
            result["texts"].append(text)
    reference = loaded[0][2]["texts"]
    rows = []
    for label, transcriber, result in loaded:
        same = sum(a == b for a, b in zip(result["texts"], reference))
        rows.append(
            {
                "variant": label,
                "providers": transcriber.providers,
                "io_binding": transcriber.io_binding,
                "p50_ms": round(float(np.percentile(result["latencies_ms"], 50)), 1),
                "same_text": f"{same}/{len(reference)}",
            }
        )
    return rows


def compare_engines(config: GpuCheckConfig, bundle: Path, device: str, work: Path) -> List[Dict[str, Any]]:
    """The runtime (fp16 bundle) against PyTorch fp16 and faster-whisper float16 on ``device``: bench's
    engine workers, one process each, interleaved clip by clip."""
    from resonance.bench.config import EngineSpec, window_label
    from resonance.bench.engines import FW_FP32, PYTORCH, RUNTIME
    from resonance.bench.engines.faster_whisper import ct2_model
    from resonance.bench.models import hf_config
    from resonance.bench.run import choose_clips
    from resonance.bench.worker import run_engines
    from resonance.train.base_model import resolve_base_model
    from resonance.train.evaluate import cer

    hf_dir = Path(resolve_base_model(config.base_model))
    pypi = config.base_model if config.base_model.startswith("pypi:") else None
    ct2 = ct2_model(hf_dir, work / "ct2", pypi)
    window = window_label(hf_config(hf_dir).get("max_source_positions", 1500) / 50)
    where = "CUDA" if device == "cuda" else "CPU"
    specs = [
        EngineSpec(RUNTIME, f"runtime fp16 ({where}{', IOBinding' if device == 'cuda' else ''})", str(bundle),
                   "fp16", window),
        EngineSpec(PYTORCH, f"PyTorch generate fp16 ({where})", str(hf_dir), "fp16", window),
    ]  # fmt: skip
    if device == "cuda":
        # the faster-whisper engine takes its compute type from the precision: float16 here
        specs.append(EngineSpec(FW_FP32, "faster-whisper float16 (CUDA)", str(ct2), "fp16", window))
    else:  # CTranslate2 has no float16 kernels on the CPU
        specs.append(EngineSpec(FW_FP32, "faster-whisper float32 (CPU)", str(ct2), "fp32", window))
    clips = choose_clips(_data(config)[1], config.clips)
    job = {
        "clips": [c.path for c in clips],
        "threads": config.threads,
        "warmup": config.warmup,
        "fixed_steps": None,
        "vocab_size": hf_config(hf_dir)["vocab_size"],
        "language": "zh",
        "device": device,
    }
    rows = []
    for spec, result in run_engines(specs, job, len(clips), True, work):
        row: Dict[str, Any] = {
            "engine": spec.label,
            "status": result.get("status"),
            "error": result.get("error"),
        }
        ms = result.get("latencies_ms") or []
        if result.get("status") == "ok" and ms:
            row.update(
                p50_ms=round(float(np.percentile(ms, 50)), 1),
                cer=round(cer([c.text for c in clips], result["texts"]), 4),
                peak_rss_mb=result.get("peak_rss_mb"),
                library=result.get("library"),
            )
        rows.append(row)
    runtime = rows[0].get("p50_ms")
    for row in rows:
        row["runtime_speedup"] = round(row["p50_ms"] / runtime, 2) if runtime and row.get("p50_ms") else None
    return rows


# -- the whole check ----------------------------------------------------------------------------------------


def run_gpu_check(config: GpuCheckConfig, device: str, detail: str) -> Dict[str, Any]:
    """Steps 2-5 on ``device`` (step 1, installing, happens before: see ``main``); writes the report."""
    out = _fresh_output(config.out)
    work = out / "work"
    providers = [CUDA_EP, CPU_EP] if device == "cuda" else [CPU_EP]
    report: Dict[str, Any] = {
        "device": device,
        "detail": detail,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "machine": _machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    started = time.perf_counter()
    report["train"] = train_both(config, device, work)
    report["export"] = export_fp16(
        config, report["train"][0]["adapter"], work / "bundle-personal-fp16", providers
    )
    report["runtime"] = time_runtime(config, work / "bundle-personal-fp16", device)
    base_bundle = work / "bundle-base-fp16"
    report["base_export"] = export_fp16(config, None, base_bundle, providers)
    report["engines"] = compare_engines(config, base_bundle, device, work)
    report["seconds"] = round(time.perf_counter() - started, 1)
    from resonance.fsutil import write_json_atomic

    write_json_atomic(out / REPORT, report)
    (out / "table.txt").write_text(format_table(report) + "\n", encoding="utf-8")
    return report


def format_table(report: Dict[str, Any]) -> str:
    lines = [f"gpu-check on {report['device']} ({report['detail']}), {report.get('seconds', '?')} s"]
    lines.append("\ntraining, the same steps on each device (final training loss; CER on the eval clips)")
    lines.append(
        f"  {'device':<8}{'precision':<11}{'loss':>8}{'CER before':>12}{'CER after':>11}{'samples/s':>11}"
    )
    for row in report["train"]:
        lines.append(
            f"  {row['device']:<8}{row['precision']:<11}{_num(row['final_loss']):>8}{_num(row['cer_before']):>12}"
            f"{_num(row['cer_after']):>11}{_num(row['samples_per_second']):>11}"
        )
    lines.append(
        f"  samples/s on {report['train'][0]['device']} / on the CPU: {_num(report['train'][0].get('speedup_vs_cpu'), 2)}x"
    )
    for key, title in (("export", "personal fp16 bundle"), ("base_export", "base fp16 bundle")):
        e = report[key]
        lines.append(
            f"\n{title}: parity {'passed' if e['parity_passed'] else 'FAILED'} on {', '.join(e['parity_providers'] or [])}"
            f" (CER {_num(e['parity_cer'])}, tokens identical {e['tokens_identical']}), exported in {e['seconds']} s"
        )
    lines.append("\nruntime on the personal fp16 bundle (same text as the first row)")
    for row in report["runtime"]:
        lines.append(
            f"  {row['variant']:<24}{row['p50_ms']:>9.1f} ms p50   same text {row['same_text']:<7} on {', '.join(row['providers'])}"
        )
    lines.append(
        "\nengines on the base model, same clips, taking turns (p50 latency, CER, x = slower than the runtime)"
    )
    for row in report["engines"]:
        if row.get("p50_ms") is None:
            lines.append(
                f"  {row['engine']:<36}{row['status']}: {(row.get('error') or '').splitlines()[-1:]}"
            )
            continue
        lines.append(
            f"  {row['engine']:<36}{row['p50_ms']:>9.1f} ms  CER {_num(row['cer'])}  {_num(row['runtime_speedup'], 2)}x"
            f"  peak RSS {_num(row['peak_rss_mb'])} MB"
        )
    return "\n".join(lines)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _data(config: GpuCheckConfig) -> Tuple[Path, Path]:
    from resonance.bench.run import demo_clips

    take2 = demo_clips()
    return config.data or take2.parent / "take1", config.eval_data or take2


def _fresh_output(out: Path) -> Path:
    """``out`` emptied for this run: a folder made by an earlier gpu-check is replaced (it holds only what
    gpu-check wrote); any other existing folder is refused, never cleared."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / REPORT).is_file() and not (out / "work").is_dir():
            raise ResonanceError(
                f"'{out}' exists and was not made by gpu-check; refusing to clear it", "pass another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _machine() -> Dict[str, Any]:
    import platform

    from resonance import system

    return {"cpu": system.cpu_model_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}  # fmt: skip


def main(config: GpuCheckConfig, argv: Sequence[str]) -> int:
    """The command: no GPU -> one line, exit 0; else install (and restart), run, print the table."""
    device, detail = find_device(config.allow_cpu)
    if device is None:
        print(f"gpu-check: {detail}: nothing to check (--allow-cpu runs every step on the CPU)")
        return 0
    if config.install and device == "cuda":
        installed = ensure_packages()
        if installed["pip"]:  # new packages: import them in a fresh interpreter
            os.execv(sys.executable, [sys.executable, "-m", "resonance.cli", *argv, "--no-install"])
    report = run_gpu_check(config, device, detail)
    print(format_table(report))
    print(f"results: {config.out}/{REPORT}, table.txt")
    failed = [r["engine"] for r in report["engines"] if r.get("status") != "ok"]
    parity = all(report[k]["parity_passed"] for k in ("export", "base_export"))
    return 0 if parity and not failed else 1
