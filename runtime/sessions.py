"""onnxruntime sessions: provider choice (TensorRT -> CUDA -> CPU), threads, and the install problems users hit.

Providers are an ordered wish list filtered by what this onnxruntime build has (sherpa-onnx ``session.cc`` does
the same); a missing accelerator is one WARNING line, not an error, so a bundle always runs somewhere. The
providers a session really uses are reported back (``session.get_providers()``), because onnxruntime may also
drop one at load time (e.g. CUDA present but libcudnn missing).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from resonance.errors import DependencyMissing, ResonanceError

log = logging.getLogger(__name__)

# onnxruntime >= 1.2x keeps usage telemetry (a device id, paths) in ~/.cache/Microsoft/DeveloperTools and reads
# this variable when it is imported, which happens only through import_onnxruntime() below: a patient's offline
# device writes nothing it was not asked to. An operator who wants telemetry sets the variable to 0.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

CPU = "CPUExecutionProvider"
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
# A provider is a name, or (name, options) as onnxruntime takes them, e.g. TensorRT's engine cache folder.
ProviderSpec = Union[str, Tuple[str, Dict[str, Any]]]

_INSTALL_HINT = {
    "CUDAExecutionProvider": "pip install 'resonance-asr[gpu]' (onnxruntime-gpu) on a CUDA PC, or NVIDIA's "
    "onnxruntime-gpu wheel for JetPack on a Jetson",
    "TensorrtExecutionProvider": "use an onnxruntime-gpu build with TensorRT (NVIDIA's Jetson wheel has it) "
    "and TensorRT's libraries on the library path",
}
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def import_onnxruntime():
    """Import onnxruntime lazily, with the fix for the two ways installs go wrong."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyMissing(
            f"the runtime needs onnxruntime, which is not installed or does not load ({exc})",
            "pip install 'resonance-asr[cpu]' on a PC, 'resonance-asr[gpu]' with an NVIDIA GPU, or on a "
            "Jetson NVIDIA's onnxruntime-gpu wheel for your JetPack (see the README)",
        ) from exc
    if not hasattr(ort, "InferenceSession"):
        # Both wheels install into the same `onnxruntime` folder; uninstalling one of them breaks the other.
        raise DependencyMissing(
            "onnxruntime is installed but broken (no InferenceSession): usually both 'onnxruntime' and "
            "'onnxruntime-gpu' were installed and one was removed",
            "pip uninstall -y onnxruntime onnxruntime-gpu, then install exactly one of them",
        )
    return ort


def _installed_distributions() -> List[str]:
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return []
    names = []
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        if name.startswith("onnxruntime"):
            names.append(name)
    return names


def _name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


# What has been warned about in this process: the encoder, the decoder and every patient's bundle resolve the
# same wish list, and the caregiver should read the fallback once, not once per session.
_WARNED: set = set()


def resolve_providers(requested: Sequence[ProviderSpec]) -> List[ProviderSpec]:
    """Keep the requested providers this build has, in order; CPU is always the last resort."""
    ort = import_onnxruntime()
    available = set(ort.get_available_providers())
    chosen = choose_providers(requested, available)
    missing = tuple(_name(spec) for spec in requested if _name(spec) not in available)
    if missing and (missing, _name(chosen[0])) not in _WARNED:
        _WARNED.add((missing, _name(chosen[0])))
        log.warning("%s", unavailable_message(missing, fallback=_name(chosen[0])))
    return chosen


def choose_providers(requested: Sequence[ProviderSpec], available: Iterable[str]) -> List[ProviderSpec]:
    """The requested providers that ``available`` (a build's) has, in order; CPU is always the last resort."""
    available = set(available)
    chosen = [spec for spec in requested if _name(spec) in available]
    if CPU not in [_name(spec) for spec in chosen]:
        chosen.append(CPU)
    return chosen


def unavailable_message(names: Sequence[str], fallback: str = CPU) -> str:
    """One line that says what is missing, what happens instead and how to get it."""
    dists = _installed_distributions()
    if "onnxruntime" in dists and any(d.startswith("onnxruntime-gpu") for d in dists):
        how = (
            "both onnxruntime and onnxruntime-gpu are installed and the CPU one wins: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )
    else:
        hints = [_INSTALL_HINT.get(name, "install an onnxruntime build that has it") for name in names]
        how = "; ".join(dict.fromkeys(hints))  # unique, in order
    missing = ", ".join(_short(name) for name in names)
    return f"{missing} not available in this onnxruntime build ({how}); falling back to {_short(fallback)}"


def _short(name: str) -> str:
    return name[: -len("ExecutionProvider")] if name.endswith("ExecutionProvider") else name


def session_options(threads: Optional[int] = None, optimization: str = "all", spin_wait: bool = False):
    """``spin_wait``: let idle worker threads busy-wait for the next task (onnxruntime's default) instead of
    sleeping. Off here: every session has its own pool, and a worker spins for milliseconds after its last
    task, so the encoder's workers spin through the decoder's first steps and the decoder's through the next
    clip, taking the cores the running session needs; on a machine that also serves, trains or runs a second
    request it is worse. Measured on 2 shared cores (speaker A's 5 s bundles, 2 threads, interleaved): p50
    per clip int8 188 -> 132 ms, fp32 300 -> 190 ms with spinning off (README, Speed)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        # intra_op: threads inside one operator (MatMul); inter_op stays 1 because Whisper's graph is sequential.
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    if optimization not in _OPT_LEVELS:
        raise ResonanceError(
            f"unknown graph optimisation level {optimization!r}", f"use one of {sorted(_OPT_LEVELS)}"
        )
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimization])
    return options


def create_session(
    path: Path,
    providers: Sequence[ProviderSpec] = DEFAULT_PROVIDERS,
    threads: Optional[int] = None,
    optimization: str = "all",
    spin_wait: bool = False,
):
    """An InferenceSession on the best available provider of ``providers`` (``spin_wait``: see
    :func:`session_options`)."""
    ort = import_onnxruntime()
    chosen = resolve_providers(providers)
    options = session_options(threads, optimization, spin_wait)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except ort_errors(ort) as exc:
        raise ResonanceError(
            f"onnxruntime could not load {path}: {exc}",
            "re-export the bundle with the resonance version on this device, or upgrade onnxruntime",
        ) from exc
    in_use = session.get_providers()
    wanted = [_name(spec) for spec in chosen]
    if wanted[0] != in_use[0] and ("init", wanted[0], in_use[0]) not in _WARNED:
        # The build has the provider but it failed to initialise (missing CUDA/cuDNN/TensorRT libraries);
        # every later session fails the same way, so say it once.
        _WARNED.add(("init", wanted[0], in_use[0]))
        log.warning(
            "%s is installed but could not be initialised (check the GPU driver and the CUDA/cuDNN/TensorRT "
            "libraries; onnxruntime's own error is above); running on %s",
            _short(wanted[0]),
            _short(in_use[0]),
        )
    log.debug("%s runs on %s", Path(path).name, in_use)
    return session


def ort_errors(ort) -> Tuple[type, ...]:
    """onnxruntime's own exception types (Fail, InvalidGraph, InvalidProtobuf …): plain Exceptions."""
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    names = ("Fail", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "InvalidArgument", "RuntimeException")
    found = tuple(getattr(state, name) for name in names if hasattr(state, name))
    return (*found, RuntimeError, OSError)


def numpy_dtype(onnx_type: str):
    """The numpy dtype for an ONNX type string such as 'tensor(float16)'."""
    import numpy as np

    table = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(bool)": np.bool_,
    }
    if onnx_type not in table:
        raise ResonanceError(f"unexpected ONNX input type {onnx_type}", "re-export the bundle")
    return table[onnx_type]
