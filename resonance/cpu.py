"""Which int8 preset suits a CPU: the choice export makes by default and a device config's ``auto`` means.

Torch-free and Python-3.8-clean: a device config is loaded on a Jetson.
"""

from __future__ import annotations

import platform
from typing import Sequence

from resonance.system import cpu_flags


def int8_preset_for(machine: str, cpu_flags: Sequence[str]) -> str:
    """The int8 preset for a CPU: arm64 for ARM; avx512 with AVX-512; otherwise avx2, whose unsigned weights
    are right on every x86 CPU (signed ones saturate AVX2's u8 x s8 multiply-add), including when the flags
    are unknown (not Linux; Intel's consumer CPUs since 2021 have no AVX-512)."""
    if machine.lower().startswith(("aarch64", "arm")):
        return "arm64"
    return "avx512" if "avx512f" in cpu_flags else "avx2"


def host_int8_preset() -> str:
    """int8_preset_for this machine (CPU flags from /proc/cpuinfo where there is one)."""
    return int8_preset_for(platform.machine(), cpu_flags())
