"""Sessions as a device config asks for them: its providers (TensorRT with an engine cache), threads per
session, and a warning when a bundle was made for another precision or CPU than the device expects.

Used by ``Transcriber.for_device`` and by the server's registry (runtime/models.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, List

from resonance.runtime.bundle import Manifest
from resonance.runtime.device_config import DeviceConfig

log = logging.getLogger(__name__)


def provider_specs(config: DeviceConfig, bundle_dir: Path) -> List[Any]:
    """The config's providers as onnxruntime takes them; TensorRT gets an engine cache.

    Without the cache TensorRT rebuilds its engines at every start, which takes minutes on a Jetson.
    onnxruntime names cached engines by a hash of the graph, so a re-exported bundle gets new ones.
    """
    specs: List[Any] = []
    for name in config.providers:
        if name == "TensorrtExecutionProvider":
            cache = Path.home() / ".cache" / "resonance" / "tensorrt" / Path(bundle_dir).name
            cache.mkdir(parents=True, exist_ok=True)
            options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache)}
            specs.append((name, options))
        else:
            specs.append(name)
    return specs


def session_threads(config: DeviceConfig) -> int:
    """Threads per onnxruntime session: the config's, or (0 = auto) the CPUs shared by the concurrent requests.

    onnxruntime's own default is one thread per core *per session*: two concurrent requests would then run
    twice as many threads as there are cores, and contention makes both slower than running them in turn.
    """
    if config.intra_op_threads > 0:
        return config.intra_op_threads
    return max(1, (os.cpu_count() or 1) // config.max_concurrent_requests)


def precision_advice(bundle: str, manifest: Manifest, config: DeviceConfig) -> List[str]:
    """What to say when a bundle was made for another precision or CPU than the device expects: it runs, but
    maybe slowly or less accurately (`resonance doctor` shows the same lines)."""
    advice = []
    if manifest.precision != config.precision:
        advice.append(
            f"bundle '{bundle}' is {manifest.precision} but device config '{config.name}' expects "
            f"{config.precision}: it runs, maybe slower (e.g. int8 on CUDA runs its quantised layers on the CPU); "
            "re-export with --quantize to match"
        )
    preset = manifest.quantization.get("int8_preset")
    if manifest.precision == "int8" and preset and preset != config.int8_preset:
        advice.append(
            f"bundle '{bundle}' was quantised for {preset} CPUs, device config '{config.name}' expects "
            f"{config.int8_preset}: it runs; for the best speed re-export with --int8-preset {config.int8_preset}"
        )
    return advice


def warn_on_precision(bundle: str, manifest: Manifest, config: DeviceConfig) -> None:
    """Say :func:`precision_advice` once, at load."""
    for advice in precision_advice(bundle, manifest, config):
        log.warning("%s", advice)
