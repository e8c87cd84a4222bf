"""Per-device settings: ``device_configs/*.yaml``, one schema whose defaults live in :class:`DeviceConfig`.

``load_device_config("pc-cpu")`` reads the packaged file ``resonance/device_configs/pc-cpu.yaml``;
``load_device_config("my-box.yaml")`` reads a file of the same schema. A file lists only what differs from
the defaults below (an ordinary PC, CPU only), and decoding choices apart from the hardware, in a
``decoding:`` section of :class:`~resonance.runtime.decoding.DecodingOptions` fields (e.g. ``beam_size: 1``).
Unknown, mistyped or out-of-range keys are a ResonanceError naming the key and the file, so a typo never
silently falls back to a default.

Adding a setting: one field below (its default, a comment, its rule if any), and the configs whose value
differs from the default.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

from resonance.constants import HOST_PRESET, INT8_PRESETS, PRECISIONS
from resonance.cpu import host_int8_preset
from resonance.errors import ResonanceError
from resonance.runtime.decoding import DecodingOptions
from resonance.runtime.schema import check_types, field_types, type_problem

log = logging.getLogger(__name__)

PACKAGE = "resonance.device_configs"
# Top-level keys that are decoding options, from before the `decoding:` section: still read (a caregiver's
# own copy of an old config keeps working), with a warning saying where they go now.
LEGACY_DECODING_KEYS = ("beam_size",)

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

Rule = Callable[[Any], Optional[str]]  # what is wrong with a (well-typed) value, or None when it is fine


def _between(low: float, high: float, note: str = "") -> Rule:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}{note}, got {v!r}"


def _above(low: float, high: float) -> Rule:
    return lambda v: None if low < v <= high else f"must be > {low} and <= {high}, got {v!r}"


def _one_of(choices: Sequence[str]) -> Rule:
    return lambda v: None if v in choices else f"must be one of {tuple(choices)}, got {v!r}"


def _not_blank(value: str) -> Optional[str]:
    return None if value.strip() else "must be a non-empty string"


def _check_providers(value: Tuple[str, ...]) -> Optional[str]:
    if not value:
        return "must be a non-empty list of onnxruntime provider names"
    unknown = [p for p in value if p not in KNOWN_PROVIDERS]
    if unknown:
        return f"unknown provider(s) {unknown}; known: {', '.join(KNOWN_PROVIDERS)}"
    if len(set(value)) != len(value):
        return "lists a provider twice"
    return None


def _check_host(value: str) -> Optional[str]:
    if value == "localhost":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address such as 0.0.0.0 (all interfaces) or 127.0.0.1 (this machine only)"
    return None


def _setting(default: Any, rule: Optional[Rule] = None) -> Any:
    """A device-config field: its default, and the rule its value must follow beyond its type."""
    return field(default=default, metadata={"rule": rule})


@dataclass(frozen=True)
class DeviceConfig:
    """One device's hardware and serving settings; the defaults describe an ordinary PC, CPU only."""

    # What `--config` names; a packaged config's name is its file name (a YAML file without one: its stem).
    name: str = field(metadata={"rule": _not_blank})
    # One human line, shown by `resonance serve` and in /health.
    description: str = _setting("")
    # onnxruntime execution providers, best first; those not installed are skipped with one log line.
    providers: Tuple[str, ...] = _setting(("CPUExecutionProvider",), _check_providers)
    # The bundle precision this device runs best (fp32|int8|fp16); another one loads, with a warning.
    # int8 (dynamic MatMul quantisation): weights 4x smaller than fp32 and usually faster on AVX2/VNNI CPUs.
    precision: str = _setting("int8", _one_of(PRECISIONS))
    # The CPU an int8 bundle should be quantised for (`resonance export --int8-preset`): avx2|avx512|arm64 …
    # or "auto", resolved on load to this machine's (resonance/cpu.py), which is also export's default.
    int8_preset: str = _setting(HOST_PRESET, _one_of((*INT8_PRESETS, HOST_PRESET)))
    # Threads per onnxruntime session; 0 = auto: the machine's CPUs divided by max_concurrent_requests, so
    # concurrent requests never run more threads than there are CPUs.
    intra_op_threads: int = _setting(0, _between(0, 256, " (0 = auto)"))
    # Longest accepted recording, in seconds (413 above): Whisper hears 30 s windows.
    max_audio_seconds: float = _setting(30.0, _above(0, 3600))
    # Largest accepted upload in MB (413 above): 30 s of 48 kHz stereo 32-bit float WAV is ~11.5 MB.
    max_upload_mb: float = _setting(25.0, _above(0, 1024))
    # Requests transcribed at the same time; further ones wait for a slot.
    max_concurrent_requests: int = _setting(2, _between(1, 64))
    # Seconds a request waits for a free slot before it gets 503 "busy" with Retry-After.
    queue_timeout_s: float = _setting(10.0, _between(0, 600))
    # Memory for loaded bundles, in MB of their model files (a whisper-base int8 bundle: 180 MB of files,
    # ~230 MB of RAM once loaded, more while it transcribes): beyond it the least recently used patient's
    # bundle is unloaded, to load again on its next request. 0 = no limit (every bundle stays loaded).
    model_memory_mb: float = _setting(2048.0, _between(0, 1_000_000, " (0 = no limit)"))
    # Interface the server binds: 0.0.0.0 = every interface, so the caregiver's phone on the LAN reaches it.
    host: str = _setting("0.0.0.0", _check_host)
    # TCP port of the page and the API (the guide's app setting uses 8000); HTTPS when serving the LAN.
    port: int = _setting(8000, _between(1, 65535))
    # Plain-http port beside HTTPS when serving the LAN: apps that cannot trust the local CA, and the phone's
    # first visit to download that CA (the page there has no microphone); 0 = none.
    http_port: int = _setting(8080, _between(0, 65535, " (0 = none)"))
    # Decoding choices (the YAML's `decoding:` section): beam_size (1 = greedy) and the guards' thresholds.
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    source: str = field(default="", compare=False)  # the file it was read from (not a YAML key)

    def __post_init__(self) -> None:
        where = f"device config {self.source or '<code>'}"
        wrong = check_types(self, skip=("decoding", "source")) or self._rule_problem()
        if wrong is not None:
            key, problem = wrong
            raise ResonanceError(
                f"{where}: '{key}' {problem}", f"fix '{key}' in {self.source or 'the config'}"
            )
        if not isinstance(self.decoding, DecodingOptions):
            raise ResonanceError(f"{where}: 'decoding' must be DecodingOptions", "use DeviceConfig.replace")
        if self.int8_preset == HOST_PRESET:
            object.__setattr__(self, "int8_preset", host_int8_preset())  # "auto": the CPU it is loaded on

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def _rule_problem(self) -> Optional[Tuple[str, str]]:
        """(key, problem) for the first setting that breaks its rule (range, known names); None if none does."""
        for f in dataclasses.fields(self):
            rule = f.metadata.get("rule")
            problem = rule(getattr(self, f.name)) if rule is not None else None
            if problem:
                return f.name, problem
        return None

    def replace(self, **changes: Any) -> DeviceConfig:
        """A copy with some settings changed (command-line overrides such as --port), checked like the file.
        ``decoding`` is a mapping of decoding options to change (``{"beam_size": 4}``)."""
        if "decoding" in changes:
            merged = {**dataclasses.asdict(self.decoding), **dict(changes["decoding"])}
            changes["decoding"] = _decoding_options(merged, self.source or "<overrides>")
        return dataclasses.replace(self, **changes)


SETTINGS = tuple(f.name for f in dataclasses.fields(DeviceConfig) if f.name != "source")  # the YAML's keys


def _decoding_options(value: Any, source: str) -> DecodingOptions:
    """The `decoding:` section as DecodingOptions; every problem names the key and the file."""
    where = f"device config {source}"
    if not isinstance(value, Mapping):
        raise ResonanceError(
            f"{where}: 'decoding' must be a mapping of decoding options", "e.g. decoding: {beam_size: 4}"
        )
    known = field_types(DecodingOptions)
    unknown = sorted(set(value) - set(known), key=str)
    if unknown:
        raise ResonanceError(
            f"{where} has unknown decoding option(s) {unknown}",
            f"remove or correct them; the options are: {', '.join(known)}",
        )
    for key, hint in known.items():
        problem = type_problem(hint, value[key]) if key in value else None
        if problem:
            raise ResonanceError(f"{where}: 'decoding.{key}' {problem}", f"fix 'decoding.{key}' in {source}")
    try:
        return DecodingOptions(**dict(value))
    except ResonanceError as exc:
        raise ResonanceError(f"{where}: decoding: {exc.message}", f"fix 'decoding' in {source}") from exc


def _from_mapping(data: Any, source: str) -> DeviceConfig:
    where = f"device config {source}"
    if not isinstance(data, dict):
        raise ResonanceError(
            f"{where} is not a YAML mapping of key: value", "copy a packaged config and edit it"
        )
    values = dict(data)
    legacy = {key: values.pop(key) for key in LEGACY_DECODING_KEYS if key in values}
    unknown = sorted(set(values) - set(SETTINGS), key=str)
    if unknown:
        raise ResonanceError(
            f"{where} has unknown key(s) {unknown}",
            f"remove or correct them; the keys are: {', '.join(SETTINGS)}",
        )
    if legacy:
        log.warning(
            "%s: %s belongs under 'decoding:' now (read as decoding options this time)", where, sorted(legacy)
        )
    decoding = values.get("decoding", {})
    if legacy and isinstance(decoding, Mapping):
        decoding = {**legacy, **decoding}
    values["decoding"] = _decoding_options(decoding if decoding is not None else {}, source)
    values.setdefault("name", Path(source).stem)
    return DeviceConfig(source=source, **values)


def _parse_yaml(text: str, source: str) -> DeviceConfig:
    import yaml

    from resonance.yaml_text import safe_load

    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        raise ResonanceError(
            f"device config {source} is not valid YAML: {exc}", "fix the file's syntax"
        ) from exc
    except RecursionError as exc:  # "[" x 100000: the parser runs out of stack, not a traceback
        raise ResonanceError(f"device config {source} is nested too deeply", "fix the file's syntax") from exc
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
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ResonanceError(f"device config {path} is not UTF-8 text", "save it as UTF-8") from exc
        return _parse_yaml(text, str(path))
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
