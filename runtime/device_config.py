"""Per-device settings: one YAML schema for every target (``device_configs/*.yaml``), checked strictly on load.

``load_device_config("pc-cpu")`` reads the packaged file ``resonance/device_configs/pc-cpu.yaml``;
``load_device_config("my-box.yaml")`` reads a file of the same schema. Unknown, missing, mistyped or
out-of-range keys are a ResonanceError naming the key and the file, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from resonance.errors import ResonanceError
from resonance.runtime.bundle import HOST_PRESET, INT8_PRESETS, PRECISIONS, host_int8_preset

PACKAGE = "resonance.device_configs"

# onnxruntime's provider names (`onnxruntime.get_all_providers()` minus the exotic ones); a typo such as
# "CudaExecutionProvider" would otherwise be skipped silently as "not installed".
KNOWN_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "OpenVINOExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "QNNExecutionProvider",
    "CPUExecutionProvider",
)


@dataclass(frozen=True)
class DeviceConfig:
    name: str  # what `--config` names; equals the file's stem for packaged configs
    description: str  # one human line, shown at start and in /health
    providers: Tuple[str, ...]  # onnxruntime execution providers, best first
    precision: str  # bundle precision this device runs best (fp32|int8|fp16); others load with a warning
    int8_preset: str  # the CPU an int8 bundle should be quantised for (`resonance export --int8-preset`);
    # "auto" in the YAML is resolved on load to this machine's (runtime/bundle.py host_int8_preset)
    intra_op_threads: int  # threads per onnxruntime session; 0 = auto: CPUs / max_concurrent_requests
    max_audio_seconds: float  # longer recordings get 413
    max_upload_mb: float  # larger request bodies get 413
    max_concurrent_requests: int  # transcriptions running at once; more wait for a slot
    queue_timeout_s: float  # how long a request waits for a slot before 503 "busy"
    beam_size: int  # 1 = greedy decoding; more keeps that many hypotheses (slower, sometimes more accurate)
    host: str  # interface the server binds (0.0.0.0 = all, for the LAN)
    port: int  # TCP port
    source: str = dataclasses.field(default="", compare=False)  # file it was read from (not a YAML key)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def replace(self, **changes: Any) -> DeviceConfig:
        """A copy with some fields changed (command-line overrides such as --port), re-validated."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}
        data.update(changes)
        data["providers"] = list(data["providers"])
        return _from_mapping(data, self.source or "<overrides>")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML `true` is a bool, and bool is an int


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _check_providers(value: Any) -> Optional[str]:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        return "must be a non-empty list of onnxruntime provider names"
    unknown = [p for p in value if p not in KNOWN_PROVIDERS]
    if unknown:
        return f"unknown provider(s) {unknown}; known: {', '.join(KNOWN_PROVIDERS)}"
    if len(set(value)) != len(value):
        return "lists a provider twice"
    return None


def _check_host(value: Any) -> Optional[str]:
    if value == "localhost":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address such as 0.0.0.0 (all interfaces) or 127.0.0.1 (this machine only)"
    return None


Check = Callable[[Any], Optional[str]]  # returns a problem description, or None when the value is fine


def _typed(
    kind: str, ok: Callable[[Any], bool], rule: Callable[[Any], bool] = lambda v: True, need: str = ""
) -> Check:
    def check(value: Any) -> Optional[str]:
        if not ok(value):
            return f"must be {kind}, got {type(value).__name__} {value!r}"
        if not rule(value):
            return f"must be {need}, got {value!r}"
        return None

    return check


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


SCHEMA: Dict[str, Check] = {
    "name": _typed("a non-empty string", _text),
    "description": _typed("a string", lambda v: isinstance(v, str)),
    "providers": _check_providers,
    "precision": _typed(
        "a string", lambda v: isinstance(v, str), lambda v: v in PRECISIONS, f"one of {PRECISIONS}"
    ),
    "int8_preset": _typed(
        "a string",
        lambda v: isinstance(v, str),
        lambda v: v in (*INT8_PRESETS, HOST_PRESET),
        f"one of {(*INT8_PRESETS, HOST_PRESET)}",
    ),
    "intra_op_threads": _typed(
        "an integer", _is_int, lambda v: 0 <= v <= 256, "between 0 and 256 (0 = auto)"
    ),
    "max_audio_seconds": _typed("a number", _is_number, lambda v: 0 < v <= 3600, "> 0 and <= 3600"),
    "max_upload_mb": _typed("a number", _is_number, lambda v: 0 < v <= 1024, "> 0 and <= 1024"),
    "max_concurrent_requests": _typed("an integer", _is_int, lambda v: 1 <= v <= 64, "between 1 and 64"),
    "queue_timeout_s": _typed("a number", _is_number, lambda v: 0 <= v <= 600, ">= 0 and <= 600"),
    "beam_size": _typed("an integer", _is_int, lambda v: 1 <= v <= 16, "between 1 (greedy) and 16"),
    "host": _check_host,
    "port": _typed("an integer", _is_int, lambda v: 1 <= v <= 65535, "between 1 and 65535"),
}


def _from_mapping(data: Any, source: str) -> DeviceConfig:
    where = f"device config {source}"
    if not isinstance(data, dict):
        raise ResonanceError(
            f"{where} is not a YAML mapping of key: value", "copy a packaged config and edit it"
        )
    unknown = sorted(set(data) - set(SCHEMA), key=str)
    if unknown:
        raise ResonanceError(
            f"{where} has unknown key(s) {unknown}",
            f"remove or correct them; the keys are: {', '.join(SCHEMA)}",
        )
    missing = [key for key in SCHEMA if key not in data]
    if missing:
        raise ResonanceError(f"{where} is missing key(s) {missing}", "every device config sets every key")
    for key, check in SCHEMA.items():
        problem = check(data[key])
        if problem:
            raise ResonanceError(f"{where}: '{key}' {problem}", f"fix '{key}' in {source}")
    values = dict(data)
    values["providers"] = tuple(values["providers"])
    if values["int8_preset"] == HOST_PRESET:
        values["int8_preset"] = host_int8_preset()  # "auto": the CPU this config is loaded on
    for key in ("max_audio_seconds", "max_upload_mb", "queue_timeout_s"):
        values[key] = float(values[key])
    return DeviceConfig(source=source, **values)


def _parse_yaml(text: str, source: str) -> DeviceConfig:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ResonanceError(
            f"device config {source} is not valid YAML: {exc}", "fix the file's syntax"
        ) from exc
    return _from_mapping(data, source)


def _packaged_text(name: str) -> Optional[str]:
    resource = f"{name}.yaml"
    if hasattr(importlib.resources, "files"):  # Python >= 3.9
        entry = importlib.resources.files(PACKAGE) / resource
        return entry.read_text(encoding="utf-8") if entry.is_file() else None
    if not importlib.resources.is_resource(PACKAGE, resource):  # Python 3.8 (JetPack 5)
        return None
    return importlib.resources.read_text(PACKAGE, resource, encoding="utf-8")


def list_device_configs() -> List[str]:
    """Names of the packaged device configs, sorted."""
    if hasattr(importlib.resources, "files"):
        names = [entry.name for entry in importlib.resources.files(PACKAGE).iterdir()]
    else:
        names = list(importlib.resources.contents(PACKAGE))
    return sorted(name[: -len(".yaml")] for name in names if name.endswith(".yaml"))


def load_device_config(name_or_path: Union[str, Path]) -> DeviceConfig:
    """Load a packaged config by name (``pc-cpu``) or a YAML file by path (``./my-box.yaml``)."""
    text = str(name_or_path)
    looks_like_path = (
        isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text
    )
    if looks_like_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ResonanceError(
                f"device config file not found: {path}", f"packaged configs: {list_device_configs()}"
            )
        return _parse_yaml(path.read_text(encoding="utf-8"), str(path))
    packaged = _packaged_text(text) if text.replace("-", "").replace("_", "").isalnum() else None
    if packaged is None:
        raise ResonanceError(
            f"unknown device config '{text}'",
            f"use one of {', '.join(list_device_configs())}, or the path of a YAML file of the same schema",
        )
    config = _parse_yaml(packaged, f"{PACKAGE}/{text}.yaml")
    if config.name != text:
        raise ResonanceError(
            f"packaged device config {text}.yaml says name: {config.name}", "make them match"
        )
    return config
