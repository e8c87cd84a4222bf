"""The results as one JSON-able report: a row per engine (percentiles, RTF, CER, speed-ups), the server
measurements, the machine and the notes a reader needs to trust (or distrust) the numbers."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from resonance import system
from resonance.bench.config import PERSONAL, BenchConfig, Clip, EngineSpec
from resonance.bench.engines import FW_INT8, PYTORCH

# speed-up columns: (reference engine, the row key holding "p50 of the reference / p50 of this row")
SPEEDUPS = ((PYTORCH, "speedup_vs_pytorch"), (FW_INT8, "speedup_vs_fw_int8"))
SPEED_FLAG_PREFIXES = ("avx", "amx", "sse4", "asimd", "neon", "sve", "vnni")


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on Windows
        return None


def build_report(
    config: BenchConfig,
    base_model: str,
    manifests,
    clips: Sequence[Clip],
    results: Sequence[Tuple[EngineSpec, Dict[str, Any]]],
    servers: List[Dict[str, Any]],
    load_before: Optional[float],
    data: str,
    adapter: Optional[Path] = None,
    floor: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """``adapter``: the personal adapter the personal table's baselines ran (merged, at its window);
    ``floor``: the machine's measured ``peaks`` and the model's ``architecture`` (bench/floor.py)."""
    load_after = loadavg()
    rows = engine_rows(config, clips, results)
    if floor:
        from resonance.bench.floor import row_floor

        for row in rows:
            if row.get("p50_ms"):
                row["floor_ms"] = round(row_floor(floor["architecture"], row, floor["peaks"]), 1)
                row["x_floor"] = round(row["p50_ms"] / row["floor_ms"], 2)
    return {
        "model": _model_title(config, base_model),
        "random_weights": bool(config.random_size),
        "decode_steps": config.decode_steps if config.random_size else None,
        "base_model": base_model,
        "personal_adapter": str(adapter) if adapter else None,
        "threads": config.threads,
        "warmup_clips": config.warmup,
        "data": data,
        "clips": [asdict(c) for c in clips],
        "audio_seconds": round(sum(c.seconds for c in clips), 2),
        "machine": _machine(load_before, load_after),
        "floor": floor,
        "engines": rows,
        "server": servers,
        "notes": _notes(config, base_model, manifests, rows, load_before, load_after, adapter),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def engine_rows(
    config: BenchConfig, clips: Sequence[Clip], results: Sequence[Tuple[EngineSpec, Dict[str, Any]]]
) -> List[Dict[str, Any]]:
    from resonance.train.evaluate import cer

    audio_s = sum(c.seconds for c in clips)
    rows = []
    for spec, result in results:
        row: Dict[str, Any] = {**asdict(spec), **result}
        ms = result.get("latencies_ms") or []
        if result.get("status") == "ok":
            row.update(
                p50_ms=percentile(ms, 50), p90_ms=percentile(ms, 90), mean_ms=round(float(np.mean(ms)), 1)
            )
            row["rtf"] = round(sum(ms) / 1000.0 / audio_s, 4)  # seconds of compute per second of audio
            row["tokens_per_clip"] = round(float(np.mean(result["tokens"])), 1)
            texts = result["texts"]
            row["cer"] = None if config.random_size else round(cer([c.text for c in clips], texts), 4)
            if result.get("stages"):
                row["stages_p50"] = stage_percentiles(result["stages"], result["tokens"])
        rows.append(row)
    for ref_engine, key in SPEEDUPS:  # each table against its own reference: same model, same window
        for row in rows:
            ref = next(
                (
                    r
                    for r in rows
                    if r["engine"] == ref_engine and r["table"] == row["table"] and r.get("p50_ms")
                ),
                None,
            )
            ok = ref is not None and row.get("p50_ms")
            row[key] = round(ref["p50_ms"] / row["p50_ms"], 2) if ok else None
    for row in rows:  # mode=both vs the same bundle's mode=free
        free = next(
            (r for r in rows if r["model"] == row["model"] and not r["phrases"] and r.get("p50_ms")), None
        )
        ok = row["phrases"] and row.get("p50_ms") and free is not None
        row["both_vs_free"] = round(row["p50_ms"] / free["p50_ms"], 2) if ok else None
    return rows


def stage_percentiles(stages: Sequence[Dict[str, float]], tokens: Sequence[int]) -> Dict[str, float]:
    """p50 of each stage the runtime timed (features, encoder, decoder), and of the decoder's time per step
    (its text tokens plus the one that produced the end of text)."""
    p50 = {key: percentile([s.get(key, 0.0) for s in stages], 50) for key in stages[0]}
    per_step = [s.get("decoder_ms", 0.0) / (n + 1) for s, n in zip(stages, tokens)]
    p50["decoder_ms_per_step"] = percentile(per_step, 50)
    return p50


def _model_title(config: BenchConfig, base_model: str) -> str:
    if config.random_size:
        return f"whisper-{config.random_size}, RANDOM weights, {config.decode_steps} decode steps per clip"
    return base_model


def _machine(load_before: Optional[float], load_after: Optional[float]) -> Dict[str, Any]:
    import platform

    flags = system.cpu_flags()
    return {
        "cpu": system.cpu_model_name() or platform.processor(),
        # the instruction sets the engines' kernels choose between (int8 dot products, bf16, AMX tiles)
        "cpu_flags": [f for f in flags if f.startswith(SPEED_FLAG_PREFIXES) or f in ("fma", "f16c")],
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_before": load_before,
        "load_after": load_after,
    }


def _notes(config, base_model, manifests, rows, load_before, load_after, adapter=None) -> List[str]:
    notes = []
    if adapter:
        window = next((r["window"] for r in rows if r["table"] == PERSONAL), "")
        notes.append(
            f"personal table: every engine runs adapter {adapter} merged into its base model at its {window} "
            "window (PyTorch: the merged model; Optimum: its own export of it; CTranslate2: converted from it, "
            "run by Whisper.generate because faster-whisper pads to 30 s); generic table: the base model "
            "at its stock window, as each engine runs it out of the box."
        )
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
        if adapter and m.adapter and Path(m.adapter).resolve() != Path(adapter).resolve():
            notes.append(
                f"bundle of patient {m.patient} was exported from adapter {m.adapter}, not {adapter}: "
                "its personal row is not the same model as the baselines'."
            )
        if m.adapter and not config.random_size and not adapter:
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
