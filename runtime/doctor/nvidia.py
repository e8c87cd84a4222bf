"""NVIDIA's side of a GPU install, as plain text in and plain facts out (no I/O here, so tests feed it fakes).

onnxruntime's CUDA and TensorRT providers are shared libraries (``capi/libonnxruntime_providers_cuda.so``)
that onnxruntime loads when a session asks for them; when one of *their* libraries is missing it logs an error
and the session silently runs on the CPU. ``ldd`` on the provider library names exactly what is missing and
which major version it must be (``libcublasLt.so.13 => not found``), whatever onnxruntime build or JetPack this
is, so the fix below is derived from those names rather than from a table of onnxruntime releases.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

# Library families (soname prefix -> family), in the order a user should fix them: no driver, no GPU at all.
DRIVER, CUDA, CUDNN, TENSORRT = "driver", "CUDA", "cuDNN", "TensorRT"
_FAMILY_PREFIXES = (
    ("libcuda.so", DRIVER),
    ("libcudnn", CUDNN),
    ("libnvinfer", TENSORRT),
    ("libnvonnxparser", TENSORRT),
    ("libcublas", CUDA),
    ("libcudart", CUDA),
    ("libcufft", CUDA),
    ("libcurand", CUDA),
    ("libnvrtc", CUDA),
    ("libcupti", CUDA),
)
FAMILIES = (DRIVER, CUDA, CUDNN, TENSORRT)
# cuDNN is loaded by the CUDA provider at run time, not linked: the major it needs goes with CUDA's.
_CUDNN_FOR_CUDA = {"11": "8"}  # CUDA 12 and 13 builds of onnxruntime use cuDNN 9
DEFAULT_CUDNN = "9"
_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(not found|\S+)")
_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)")
_MISSING_IN_LOG = re.compile(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file")


def parse_ldd(text: str) -> Dict[str, Optional[str]]:
    """``ldd`` output -> {soname: resolved path, or None when "not found"}."""
    linked: Dict[str, Optional[str]] = {}
    for line in text.splitlines():
        match = _LDD_LINE.match(line)
        if match:
            soname, where = match.groups()
            linked[soname] = None if where == "not found" else where
    return linked


def parse_ldconfig(text: str) -> Dict[str, str]:
    """``ldconfig -p`` output -> {soname: path} (the first entry of each name, as the loader takes it)."""
    found: Dict[str, str] = {}
    for line in text.splitlines():
        match = _LDCONFIG_LINE.match(line)
        if match:
            found.setdefault(match.group(1), match.group(3))
    return found


def missing_in_log(text: str) -> List[str]:
    """Library names onnxruntime's own log says it could not open (``libcublas.so.13: cannot open ...``)."""
    return list(dict.fromkeys(_MISSING_IN_LOG.findall(text)))


def family(soname: str) -> Optional[str]:
    for prefix, name in _FAMILY_PREFIXES:
        if soname.startswith(prefix):
            return name
    return None


def major(soname: str) -> str:
    """``libcublasLt.so.13`` -> "13"; "" without a version."""
    tail = soname.split(".so.", 1)
    return tail[1].split(".")[0] if len(tail) == 2 else ""


def nvidia_libraries(linked: Dict[str, Optional[str]]) -> Dict[str, Dict[str, Optional[str]]]:
    """Keep NVIDIA's libraries from an ``ldd`` result, grouped by family."""
    grouped: Dict[str, Dict[str, Optional[str]]] = {}
    for soname, path in linked.items():
        name = family(soname)
        if name:
            grouped.setdefault(name, {})[soname] = path
    return grouped


def cuda_major(libraries: Dict[str, Dict[str, Optional[str]]], build_cuda_version: str = "") -> str:
    """The CUDA major a provider was built for: from ``libcudart.so.N`` / ``libcublas.so.N``, else the build's."""
    for soname in libraries.get(CUDA, {}):
        if soname.startswith(("libcudart", "libcublas.")):
            return major(soname)
    return build_cuda_version.split(".")[0] if build_cuda_version else ""


def cudnn_soname(libraries: Dict[str, Dict[str, Optional[str]]], cuda: str) -> str:
    """``libcudnn.so.N`` a provider needs: linked by TensorRT's provider, loaded at run time by CUDA's."""
    for soname in libraries.get(CUDNN, {}):
        return soname
    return f"libcudnn.so.{_CUDNN_FOR_CUDA.get(cuda, DEFAULT_CUDNN)}"


def fix_for(
    name: str, sonames: Sequence[str], on_jetson: bool, cuda: str = "", cuda_version: str = ""
) -> str:
    """The command that installs a missing library family, for a Jetson (JetPack) or a PC (NVIDIA's apt repo)."""
    if on_jetson:
        if name == DRIVER:
            return "the GPU driver comes with JetPack (L4T): sudo apt install nvidia-l4t-cuda, or reflash JetPack"
        return "sudo apt install nvidia-jetpack   # JetPack's CUDA, cuDNN and TensorRT, matched to its driver"
    version = sorted({major(s) for s in sonames if major(s)})
    n = version[0] if version else ""
    if name == DRIVER:
        return "install NVIDIA's driver (Ubuntu: sudo ubuntu-drivers install; reboot); `nvidia-smi` must list the GPU"
    if name == CUDA:
        minor = cuda_version if cuda_version.split(".")[0] == cuda and "." in cuda_version else f"{cuda}.x"
        package = f"cuda-libraries-{minor.replace('.', '-')}"
        return (
            f"install CUDA {cuda}'s libraries: sudo apt install {package} (NVIDIA's CUDA apt repository), "
            "or put the folder that has them on LD_LIBRARY_PATH"
        )
    if name == CUDNN:
        return f"sudo apt install libcudnn{n}-cuda-{cuda or 'N'}   # cuDNN {n} for CUDA {cuda} (NVIDIA's apt repository)"
    if name == TENSORRT:
        return (
            f"sudo apt install libnvinfer{n} libnvonnxparsers{n}   # TensorRT {n} (NVIDIA's apt repository); "
            "or leave TensorRT out: CUDA alone runs the bundle"
        )
    return ""


# -- Jetson -------------------------------------------------------------------------------------------------

_JETPACK_FOR_L4T = {32: 4, 35: 5, 36: 6}  # L4T (the BSP) major -> JetPack major
PYTHON_FOR_JETPACK = {4: "3.6", 5: "3.8", 6: "3.10"}  # Ubuntu 18.04 / 20.04 / 22.04's python3
_TEGRA_RELEASE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")


def parse_tegra_release(text: str) -> Optional[Tuple[str, Optional[int]]]:
    """/etc/nv_tegra_release (``# R36 (release), REVISION: 4.3, GCID: ...``) -> ("36.4.3", JetPack 6)."""
    match = _TEGRA_RELEASE.search(text)
    if not match:
        return None
    l4t_major = int(match.group(1))
    return f"{l4t_major}.{match.group(2)}", _JETPACK_FOR_L4T.get(l4t_major)


def jetson_config_for(model: str) -> str:
    """The packaged device config for a Jetson module's name (/proc/device-tree/model)."""
    return (
        "jetson-agx-orin" if "agx" in model.lower() else "jetson-orin-nano"
    )  # Nano/NX/unknown: the frugal one


def parse_nvpmodel(text: str) -> Optional[Tuple[str, int]]:
    """``nvpmodel -q`` (``NV Power Mode: MAXN`` then the mode number) -> ("MAXN", 0)."""
    name = re.search(r"NV Power Mode:\s*(\S+)", text)
    number = re.search(r"^\s*(\d+)\s*$", text, re.MULTILINE)
    if not name or not number:
        return None
    return name.group(1), int(number.group(1))
