"""The facts ``resonance doctor`` judges, read from this machine and nothing else.

Every method returns plain data and never raises for a missing file, library or package (that is a fact to
judge, not an error); results are cached, because several checks ask the same thing. Tests replace this class
with a fake that returns made-up facts (tests/test_doctor.py).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from resonance.errors import ResonanceError

DISTRIBUTION = "resonance-asr"
# A one-node ONNX model (Identity, float[1]; IR 7, opset 13: loads on every onnxruntime since 1.8) to see which
# providers a session really starts with, without a bundle. Made with onnx.helper; tests/test_doctor.py
# rebuilds it and compares.
PROBE_MODEL = base64.b64decode(
    "CAcSEHJlc29uYW5jZS1kb2N0b3I6OwoQCgF4EgF5IghJZGVudGl0eRIFcHJvYmVaDwoBeBIKCggIARIECgIIAWIPCgF5EgoKCAgBEgQKAggBQgQKABAN"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMMAND_TIMEOUT_S = 20
T = TypeVar("T")


@dataclass(frozen=True)
class OrtBuild:
    """What ``import onnxruntime`` gives (or why it gives nothing)."""

    version: str = ""
    providers: Tuple[str, ...] = ()  # get_available_providers(): compiled in, not necessarily startable
    cuda_version: str = ""  # the CUDA it was built for (capi/build_and_package_info.py, onnxruntime >= 1.21)
    capi_dir: str = ""  # where its provider libraries are
    distributions: Tuple[str, ...] = ()  # installed onnxruntime* distributions (two = the classic conflict)
    error: str = ""  # import failed / broken install: the runtime cannot start
    hint: str = ""


@dataclass(frozen=True)
class SessionProbe:
    in_use: Tuple[str, ...]  # session.get_providers() after onnxruntime's own fallback
    log: str = ""  # what onnxruntime printed while starting it (why a provider did not start)
    error: str = ""  # the session did not start at all


@dataclass(frozen=True)
class Driver:
    found: bool  # libcuda.so.1 loads
    version: str = ""  # "12.4" (cuDriverGetVersion)
    devices: Tuple[str, ...] = ()  # GPU names
    error: str = ""


@dataclass(frozen=True)
class CpuInfo:
    machine: str  # x86_64 / aarch64
    model: str
    flags: Tuple[str, ...]
    count: int


@dataclass(frozen=True)
class Microphone:
    state: str  # "ok" | "not-installed" (no sounddevice) | "no-portaudio" | "error"
    inputs: Tuple[str, ...] = ()  # input device names
    default: str = ""
    error: str = ""


@dataclass(frozen=True)
class BundleLoad:
    patient: str
    providers: Tuple[str, ...]  # what its sessions run on
    rss_mb: Optional[float]  # memory loading it added to this process
    manifest: Any  # resonance.runtime.bundle.Manifest


@dataclass(frozen=True)
class Bundles:
    loaded: List[BundleLoad]
    failed: Dict[str, str]  # folder -> why the server would skip it
    available_before: Optional[int]  # MemAvailable (bytes) before loading them
    fixes: Dict[str, str] = field(default_factory=dict)  # folder -> what to do about it, if it says


def _once(method: Callable[[Any], T]) -> Callable[[Any], T]:
    """Cache a no-argument method per Machine: several checks ask the same question."""

    @functools.wraps(method)
    def cached(self: Any) -> T:
        if method.__name__ not in self._cache:
            self._cache[method.__name__] = method(self)
        return self._cache[method.__name__]

    return cached


class Machine:
    def __init__(self, environ: Optional[Dict[str, str]] = None) -> None:
        self.environ = dict(os.environ) if environ is None else environ
        self._cache: Dict[str, Any] = {}

    # -- Python and packages ------------------------------------------------------------------------------

    def python(self) -> Dict[str, str]:
        return {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "system": platform.system(),
            "machine": platform.machine(),
        }

    @_once
    def distributions(self) -> Dict[str, str]:
        """Installed distributions: normalised name -> version."""
        from importlib import metadata

        found = {}
        for dist in metadata.distributions():
            name = dist.metadata.get("Name")
            if name:
                found[normalize(name)] = dist.version
        return found

    def requirements(self) -> List[str]:
        """resonance-asr's own Requires-Dist lines (base and extras); [] when it is not installed as a package."""
        from importlib import metadata

        try:
            return list(metadata.requires(DISTRIBUTION) or [])
        except metadata.PackageNotFoundError:
            return []

    def marker_holds(self, marker: str, extra: str = "") -> Optional[bool]:
        """Whether an environment marker holds here when installing ``extra`` ("" for the base install); None
        when ``packaging`` is missing. Evaluated whole (never cut apart as text: markers nest parentheses)."""
        try:
            from packaging.markers import Marker
        except ImportError:
            return None
        return Marker(marker).evaluate({"extra": extra})

    # -- onnxruntime --------------------------------------------------------------------------------------

    @_once
    def onnxruntime(self) -> OrtBuild:
        from resonance.runtime.sessions import import_onnxruntime

        dists = tuple(sorted(n for n in self.distributions() if n.startswith("onnxruntime")))
        try:
            ort = import_onnxruntime()
        except ResonanceError as exc:
            return OrtBuild(distributions=dists, error=exc.message, hint=exc.hint)
        try:
            from onnxruntime.capi import build_and_package_info as info

            cuda_version = str(getattr(info, "cuda_version", "") or "")
        except ImportError:
            cuda_version = ""
        return OrtBuild(
            version=str(getattr(ort, "__version__", "")),
            providers=tuple(ort.get_available_providers()),
            cuda_version=cuda_version,
            capi_dir=str(Path(ort.__file__).parent / "capi"),
            distributions=dists,
        )

    def open_session(self, providers: Sequence[str]) -> SessionProbe:
        """Start a session of the probe model on ``providers`` and see which ones it really got."""
        from resonance.runtime.sessions import choose_providers, import_onnxruntime

        ort = import_onnxruntime()
        chosen = choose_providers(providers, ort.get_available_providers())
        with _captured_output() as captured:
            try:
                session = ort.InferenceSession(PROBE_MODEL, providers=chosen)
                in_use, error = tuple(session.get_providers()), ""
            except Exception as exc:  # onnxruntime's own exception types; a probe must not stop the doctor
                in_use, error = (), f"{type(exc).__name__}: {exc}"
        return SessionProbe(in_use, _ANSI.sub("", captured.text), error)

    def linked_libraries(self, library: str) -> Optional[str]:
        """``ldd LIBRARY`` output (what the dynamic loader finds for each library it needs); None without ldd."""
        return self.run(["ldd", library]) if Path(library).is_file() else None

    @_once
    def ldconfig(self) -> str:
        for command in (["ldconfig", "-p"], ["/sbin/ldconfig", "-p"]):
            out = self.run(command)
            if out:
                return out
        return ""

    def find_library(self, soname: str) -> Optional[str]:
        """Where the dynamic loader would find ``soname`` (for a library loaded at run time, like cuDNN):
        the LD_LIBRARY_PATH folders, then ldconfig's cache; None when it would not."""
        from resonance.runtime.doctor.nvidia import parse_ldconfig

        for folder in self.environ.get("LD_LIBRARY_PATH", "").split(":"):
            if folder and (Path(folder) / soname).exists():
                return str(Path(folder) / soname)
        return parse_ldconfig(self.ldconfig()).get(soname)

    def nvidia_driver(self) -> Driver:
        """Load libcuda.so.1 (the driver's library, what every CUDA program needs) and ask it for the GPUs."""
        import ctypes

        try:
            cuda = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            return Driver(False, error=str(exc))
        version = ctypes.c_int(0)
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0:
            return Driver(True, error="cuInit failed: the driver is installed but finds no usable GPU")
        cuda.cuDriverGetVersion(ctypes.byref(version))
        cuda.cuDeviceGetCount(ctypes.byref(count))
        names = []
        for index in range(count.value):
            device = ctypes.c_int(0)
            buffer = ctypes.create_string_buffer(256)
            if cuda.cuDeviceGet(ctypes.byref(device), index) == 0:
                cuda.cuDeviceGetName(buffer, 256, device)
                names.append(buffer.value.decode(errors="replace"))
        return Driver(True, f"{version.value // 1000}.{version.value % 1000 // 10}", tuple(names))

    # -- hardware and OS ----------------------------------------------------------------------------------

    def read_text(self, path: str) -> Optional[str]:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return None

    def run(self, command: Sequence[str]) -> Optional[str]:
        """A command's stdout, or None when it is not installed, fails or hangs."""
        if not shutil.which(command[0]) and not Path(command[0]).is_file():
            return None
        try:
            proc = subprocess.run(list(command), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    def cpu(self) -> CpuInfo:
        from resonance.system import cpu_flags, cpu_model_name

        return CpuInfo(
            platform.machine(),
            cpu_model_name() or platform.processor() or "",
            tuple(cpu_flags()),
            os.cpu_count() or 1,
        )

    def memory(self) -> Dict[str, int]:
        """MemTotal and MemAvailable in bytes; {} where unknown."""
        from resonance.system import meminfo_bytes

        return meminfo_bytes()

    def disk_free(self, path: str) -> Optional[int]:
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None

    def microphone(self) -> Microphone:
        try:
            import sounddevice as sd
        except ImportError:
            return Microphone("not-installed")
        except OSError as exc:  # sounddevice raises OSError("PortAudio library not found") on import
            return Microphone("no-portaudio", error=str(exc))
        try:
            devices = sd.query_devices()
            inputs = tuple(str(d["name"]) for d in devices if d.get("max_input_channels", 0) > 0)
            default = ""
            if inputs:
                with contextlib.suppress(Exception):  # no default input is a fact, not an error
                    default = str(sd.query_devices(kind="input")["name"])
        except Exception as exc:  # PortAudio's own errors
            return Microphone("error", error=str(exc))
        return Microphone("ok", inputs, default)

    # -- the server ---------------------------------------------------------------------------------------

    def load_bundles(self, models: Path, config: Any) -> Bundles:
        """Load every bundle in ``models`` as ``resonance serve`` does (its registry: ids checked, files verified,
        the config's providers), measuring what each adds to this process's memory."""
        from resonance.runtime.models import ModelRegistry, default_transcriber_factory
        from resonance.system import rss_mb

        grown: Dict[str, Optional[float]] = {}

        def measured(folder: Path, device_config: Any) -> Any:
            before = rss_mb()
            transcriber = default_transcriber_factory(folder, device_config)
            after = rss_mb()
            grown[folder.name] = (
                round(after - before, 1) if before is not None and after is not None else None
            )
            return transcriber

        available = self.memory().get("MemAvailable")
        # What the registry logs and onnxruntime prints (a GPU provider that does not start), the doctor
        # reports as findings.
        with _quiet_logs("resonance"), _captured_output():
            registry = ModelRegistry(models, config, factory=measured)
        loaded = [
            BundleLoad(b.patient, tuple(b.transcriber.providers), grown.get(b.patient), b.manifest)
            for b in registry.bundles()
        ]
        skipped = registry.skip_reasons
        failed = {name: reason.why for name, reason in skipped.items()}
        fixes = {name: reason.fix for name, reason in skipped.items() if reason.fix}
        return Bundles(loaded, failed, available, fixes)

    def lan_addresses(self) -> List[str]:
        from resonance.runtime.server.lan import lan_addresses

        return lan_addresses()

    def tls_dir(self) -> Path:
        """Where `resonance serve` keeps the local CA and the server certificate."""
        from resonance.runtime.server.tls import default_tls_dir

        return default_tls_dir()

    def port_free(self, host: str, port: int) -> bool:
        """Whether the server could bind ``host:port`` now (an already running server holds it)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return False
        return True


@contextlib.contextmanager
def _quiet_logs(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_output() -> Iterator[_Captured]:
    """Capture what native code and Python print on stdout/stderr (onnxruntime's fallback messages), at the file
    descriptor level: onnxruntime's C++ logger writes to fd 2 directly."""
    captured = _Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")
