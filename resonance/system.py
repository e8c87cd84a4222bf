"""What Linux's /proc says about a process and the CPU; None or empty where there is no /proc (macOS, Windows).

One reader for the server's /health memory, the load test's view of the server, the benchmark's peak memory
and the CPU detection (resonance/cpu.py). Torch-free and Python-3.8-clean.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Union

Pid = Union[int, str]  # a process id, or "self" for this process


def process_status(pid: Pid = "self") -> Dict[str, str]:
    """The ``Key: value`` lines of /proc/PID/status; {} where it cannot be read (no /proc, process gone)."""
    fields: Dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep:
                    fields[key] = value.strip()
    except OSError:
        return {}
    return fields


def _kib_field_mb(pid: Pid, key: str) -> Optional[float]:
    value = process_status(pid).get(key)  # e.g. "123456 kB"
    if not value:
        return None
    try:
        return round(int(value.split()[0]) / 1024, 1)
    except ValueError:
        return None


def rss_mb(pid: Pid = "self") -> Optional[float]:
    """Resident memory now (VmRSS), in MB."""
    return _kib_field_mb(pid, "VmRSS")


def peak_rss_mb(pid: Pid = "self") -> Optional[float]:
    """Peak resident memory since the process started (VmHWM), in MB.

    Not ``ru_maxrss``: the kernel carries a parent's high-water mark over fork + exec, so a child started by a
    process that had loaded torch would report at least torch's size.
    """
    return _kib_field_mb(pid, "VmHWM")


def _cpuinfo_field(key: str) -> Optional[str]:
    """The first ``key`` line of /proc/cpuinfo (the first CPU's; they are alike on the machines we target)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model_name() -> Optional[str]:
    """e.g. "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"; None where /proc/cpuinfo has no model name."""
    return _cpuinfo_field("model name")


def cpu_flags() -> List[str]:
    """The x86 feature flags ("avx2", "avx512f", …); ARM's "Features" line; [] where unknown."""
    flags = _cpuinfo_field("flags") or _cpuinfo_field("Features") or ""
    return flags.split()


def meminfo_bytes() -> Dict[str, int]:
    """/proc/meminfo's sizes in bytes (MemTotal, MemAvailable, …); {} where there is no /proc."""
    sizes: Dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                parts = value.split()
                if sep and parts and parts[0].isdigit():
                    sizes[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        return {}
    return sizes
