"""`resonance gpu-check`: one line without a GPU; the whole pipeline on the CPU (--allow-cpu) with a tiny model,
so the GPU script runs end to end on every CI run although no GPU has run it yet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from resonance.bench import gpu_check
from resonance.bench.gpu_check import NEEDED_MODULES, find_device, install_plan, runtime_variants
from resonance.errors import ResonanceError
from resonance.runtime.doctor.machine import Driver, Machine


class _Driver:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    def nvidia_driver(self) -> Driver:
        return self.driver


def test_the_device_comes_from_the_driver():
    gpu = _Driver(Driver(True, "13.0", ("NVIDIA H200",)))
    assert find_device(False, gpu) == ("cuda", "NVIDIA H200")
    none = _Driver(Driver(False, error="libcuda.so.1: cannot open shared object file"))
    device, why = find_device(False, none)
    assert device is None and why.startswith("no NVIDIA GPU here (libcuda.so.1")
    assert find_device(True, none)[0] == "cpu"


def test_installing_is_planned_only_for_what_is_missing():
    ready = install_plan(NEEDED_MODULES, ["onnxruntime-gpu"], True, editable=True)
    assert ready == []
    fresh = install_plan(["onnxruntime"], ["onnxruntime"], None, editable=True)
    assert fresh[0][0] == "install" and fresh[0][-1].endswith("[dev]") and "-e" in fresh[0]
    assert fresh[1:] == [
        ["uninstall", "-y", "onnxruntime"],
        ["install", "--force-reinstall", "--no-deps", "onnxruntime-gpu"],
    ]
    cpu_wheel = install_plan(NEEDED_MODULES, ["onnxruntime"], True, editable=False)
    assert cpu_wheel == [
        ["uninstall", "-y", "onnxruntime"],
        ["install", "--force-reinstall", "--no-deps", "onnxruntime-gpu"],
    ]
    assert install_plan(NEEDED_MODULES, ["onnxruntime-gpu"], False, editable=False) == [
        ["install", "--force-reinstall", "torch"]
    ]


def test_runtime_variants_per_device():
    cuda = runtime_variants(
        "cuda", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert [label for label, _, _ in cuda] == [
        "CUDA + IOBinding",
        "CUDA, no IOBinding",
        "TensorRT + IOBinding",
    ]
    assert len(runtime_variants("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])) == 2
    assert [io for _, _, io in runtime_variants("cpu", ["CPUExecutionProvider"])] == [True, False]


def test_an_output_folder_it_did_not_make_is_never_cleared(tmp_path):
    mine = tmp_path / "mine"
    (mine / "work").mkdir(parents=True)
    (mine / "report.json").write_text("{}")
    assert list(gpu_check._fresh_output(mine).iterdir()) == []
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(ResonanceError, match="not made by gpu-check"):
        gpu_check._fresh_output(theirs)
    assert (theirs / "notes.txt").read_text() == "keep me"


def test_without_a_gpu_it_says_so_in_one_line(run_cli, tmp_path):
    if Machine().nvidia_driver().found:
        pytest.skip("this machine has an NVIDIA driver: gpu-check would run for real")
    proc = run_cli("gpu-check", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith("gpu-check: no NVIDIA GPU here")
    assert not (tmp_path / "out").exists()


def _subset(src: Path, dst: Path, n: int) -> Path:
    labels = json.loads((src / "labels.json").read_text(encoding="utf-8"))[:n]
    (dst / "audio").mkdir(parents=True)
    for entry in labels:
        shutil.copy(src / entry["audio"], dst / entry["audio"])
    (dst / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    return dst


def test_every_step_runs_on_the_cpu(run_cli, tiny_whisper, tmp_path):
    from helpers import DEMO_DATA

    data = _subset(DEMO_DATA / "take1", tmp_path / "take1", 4)
    eval_data = _subset(DEMO_DATA / "take2", tmp_path / "take2", 2)
    out = tmp_path / "gpu-check"
    proc = run_cli(
        "gpu-check", "--allow-cpu", "--base-model", tiny_whisper, "--data", data, "--eval-data", eval_data,
        "--steps", "1", "--clips", "1", "--warmup", "0", "--threads", "1", "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["device"] == "cpu"
    assert [r["device"] for r in report["train"]] == ["cpu", "cpu"]
    assert all(
        r["steps"] == 1 and r["final_loss"] is not None and r["cer_after"] is not None
        for r in report["train"]
    )
    for key in ("export", "base_export"):
        assert report[key]["parity_passed"] is True
        assert report[key]["parity_providers"] == ["CPUExecutionProvider"]
    assert [r["variant"] for r in report["runtime"]] == ["CPU + IOBinding", "CPU, no IOBinding"]
    assert [r["io_binding"] for r in report["runtime"]] == [True, False]
    assert all(r["same_text"] == "1/1" for r in report["runtime"])
    engines = report["engines"]
    assert [r["status"] for r in engines] == ["ok", "ok", "ok"], engines
    assert engines[0]["runtime_speedup"] == 1.0 and all(r["p50_ms"] > 0 for r in engines)
    table = (out / "table.txt").read_text(encoding="utf-8")
    assert "parity passed on CPUExecutionProvider" in table and "PyTorch generate fp16 (CPU)" in table
    assert table.strip() in proc.stdout
