"""The one /proc reader (resonance/system.py) and the CPU detection built on it (resonance/cpu.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resonance import system
from resonance.cpu import host_int8_preset, int8_preset_for

linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


@linux_only
def test_process_status_is_this_process():
    status = system.process_status("self")
    assert status["Pid"] == str(os.getpid())
    assert status["VmRSS"].endswith("kB")


@linux_only
def test_peak_rss_follows_memory_this_process_touches():
    before = system.peak_rss_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, written so it is resident
    now, peak = system.rss_mb(), system.peak_rss_mb()
    assert now is not None and peak is not None and before is not None
    assert peak >= now > 0
    assert peak >= before + 50 or before >= now  # grew by the block unless an earlier peak already covered it
    del block


@linux_only
def test_another_process_and_a_missing_one():
    ready = "import time; print('ready', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", ready], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"  # running its own interpreter, not a fork being exec'd
        assert system.rss_mb(child.pid) > 1  # an interpreter is a few MB
        assert system.peak_rss_mb(child.pid) >= system.rss_mb(child.pid)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert system.process_status(child.pid) == {}  # gone (and reaped): nothing, not an error
    assert system.rss_mb(child.pid) is None


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc/cpuinfo")
def test_cpu_facts_and_this_machines_int8_preset():
    flags = system.cpu_flags()
    if platform.machine() in ("x86_64", "AMD64"):
        assert "sse2" in flags  # every x86-64 CPU has it
        assert system.cpu_model_name()
    assert host_int8_preset() == int8_preset_for(platform.machine(), flags)
