"""`resonance doctor`: every check's judgement on made-up machines, then the real command on this one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from resonance.runtime.device_config import list_device_configs, load_device_config
from resonance.runtime.doctor import FAIL, INFO, OK, WARN, Finding, Report, checks, nvidia, run_doctor
from resonance.runtime.doctor.checks import Context
from resonance.runtime.doctor.findings import format_report
from resonance.runtime.doctor.machine import (
    PROBE_MODEL,
    Bundles,
    CpuInfo,
    Driver,
    Machine,
    Microphone,
    OrtBuild,
    SessionProbe,
)

CPU_BUILD = OrtBuild("1.32.0", ("CPUExecutionProvider",), "", "/ort/capi", ("onnxruntime",))
GPU_BUILD = OrtBuild(
    "1.31.1",
    ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "13.0",
    "/ort/capi",
    ("onnxruntime-gpu",),
)
# ldd of onnxruntime-gpu 1.31.1's providers on a machine with CUDA's runtime but nothing else (seen here)
LDD_CUDA = """\
\tlinux-vdso.so.1 (0x00007f520e85d000)
\tlibcublasLt.so.13 => not found
\tlibcublas.so.13 => not found
\tlibcurand.so.10 => not found
\tlibcudart.so.13 => /usr/local/cuda-13.0/lib/libcudart.so.13 (0x00007f51f9600000)
\tlibcuda.so.1 => not found
\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f51f9200000)
"""
LDD_TENSORRT = LDD_CUDA + "\tlibnvinfer.so.10 => not found\n\tlibnvonnxparser.so.10 => not found\n"
ORT_LOG = (
    "[E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] Failed to load library "
    "/x/libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file: No such file"
)


class FakeMachine:
    """Machine's interface with made-up facts: by default a plain x86 PC with onnxruntime (CPU) and nothing else."""

    def __init__(self, **facts: Any) -> None:
        self.build = facts.pop("build", CPU_BUILD)
        self.sessions: Dict[tuple, SessionProbe] = facts.pop("sessions", {})
        self.files: Dict[str, str] = facts.pop("files", {})
        self.commands: Dict[str, str] = facts.pop("commands", {})
        self.ldd: Dict[str, str] = facts.pop("ldd", {})
        self.libraries: Dict[str, str] = facts.pop("libraries", {})
        self.driver = facts.pop("driver", Driver(False, error="libcuda.so.1: cannot open shared object file"))
        self.py = facts.pop("python", "3.11.7")
        self.installed = facts.pop(
            "installed",
            {"resonance-asr": "0.1.0", "numpy": "2.4.6", "onnxruntime": "1.32.0", "opencc": "1.4.2"},
        )
        self.requires = facts.pop(
            "requires",
            [
                "numpy>=1.21",
                "opencc>=1.1.6; platform_machine != 'aarch64' or python_version >= '3.10'",
                "opencc-purepy>=1.5; platform_machine == 'aarch64' and python_version < '3.10'",
                'onnxruntime>=1.16; extra == "cpu"',
                'onnxruntime-gpu>=1.16; extra == "gpu"',
                'sounddevice>=0.4.6; extra == "mic"',
                'resonance-asr[cpu,mic]; extra == "dev"',
            ],
        )
        self.markers: Dict[str, Optional[bool]] = facts.pop("markers", {})
        self.cpu_info = facts.pop("cpu", CpuInfo("x86_64", "AMD EPYC", ("sse2", "avx2", "avx512f"), 2))
        self.mic = facts.pop("mic", Microphone("ok", ("USB mic",), "USB mic"))
        self.mem = facts.pop("memory", {"MemTotal": 24 << 30, "MemAvailable": 20 << 30})
        self.free = facts.pop("disk_free", 50 << 30)
        self.bundles = facts.pop("bundles", None)
        self.lan = facts.pop("lan", ["192.168.1.20"])
        self.port_is_free = facts.pop("port_free", True)
        self.tls = facts.pop("tls_dir", Path("/nonexistent/resonance-tls"))
        assert not facts, f"unknown facts {facts}"

    def python(self) -> Dict[str, str]:
        return {"version": self.py, "implementation": "CPython", "executable": "/x", "system": "Linux",
                "machine": self.cpu_info.machine}  # fmt: skip

    def distributions(self) -> Dict[str, str]:
        return self.installed

    def requirements(self) -> List[str]:
        return self.requires

    def marker_holds(self, marker: str, extra: str = "") -> Optional[bool]:
        if marker in self.markers:
            return self.markers[marker]
        return "aarch64'" not in marker or "!=" in marker  # an x86 PC

    def onnxruntime(self) -> OrtBuild:
        return self.build

    def open_session(self, providers) -> SessionProbe:
        available = [p for p in providers if p in self.build.providers] or ["CPUExecutionProvider"]
        return self.sessions.get(tuple(providers), SessionProbe(tuple(available)))

    def linked_libraries(self, library: str) -> Optional[str]:
        return self.ldd.get(Path(library).name)

    def find_library(self, soname: str) -> Optional[str]:
        return self.libraries.get(soname)

    def nvidia_driver(self) -> Driver:
        return self.driver

    def tls_dir(self) -> Path:
        return self.tls

    def read_text(self, path: str) -> Optional[str]:
        return self.files.get(path)

    def run(self, command) -> Optional[str]:
        return self.commands.get(command[0])

    def cpu(self) -> CpuInfo:
        return self.cpu_info

    def memory(self) -> Dict[str, int]:
        return self.mem

    def disk_free(self, path: str) -> Optional[int]:
        return self.free

    def microphone(self) -> Microphone:
        return self.mic

    def load_bundles(self, models, config) -> Bundles:
        return self.bundles

    def lan_addresses(self) -> List[str]:
        return self.lan

    def port_free(self, host: str, port: int) -> bool:
        return self.port_is_free


CONFIGS = {name: load_device_config(name) for name in list_device_configs()}


def context(config: str = "pc-cpu", models: Optional[Path] = None) -> Context:
    return Context(CONFIGS[config], CONFIGS, models)


def only(findings: List[Finding], status: str) -> List[Finding]:
    return [f for f in findings if f.status == status]


JETSON_FILES = {
    "/etc/nv_tegra_release": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n",
    "/proc/device-tree/model": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00",
}
ARM = CpuInfo("aarch64", "ARMv8 Processor rev 1 (v8l)", ("fp", "asimd", "asimddp"), 6)


# -- the report -----------------------------------------------------------------------------------------------


def test_only_a_fail_stops_the_config_and_each_line_says_what_to_do():
    warn = Finding(
        "gpu", WARN, "CUDA 13: libcublasLt.so.13 not found", "sudo apt install cuda-libraries-13-0"
    )
    report = Report("pc-cuda", "--config", [Finding("system", OK, "Python 3.11"), warn])
    assert report.can_run and report.exit_code() == 0
    text = format_report(report, checks.TOPICS)
    assert "  ⚠ CUDA 13: libcublasLt.so.13 not found\n      → sudo apt install cuda-libraries-13-0" in text
    assert "✓ Python 3.11" in text and "'pc-cuda' can run here, 1 warning(s)" in text
    failed = Report("pc-cuda", "--config", [warn, Finding("bundles", FAIL, "p1: corrupt", "copy it again")])
    assert not failed.can_run and failed.exit_code() == 1
    assert "cannot run here" in format_report(failed, checks.TOPICS)
    as_json = failed.to_json()
    assert as_json["can_run"] is False and as_json["counts"]["fail"] == 1
    assert as_json["findings"][1] == {
        "topic": "bundles",
        "status": "fail",
        "message": "p1: corrupt",
        "fix": "copy it again",
    }


def test_a_check_that_crashes_is_a_warning_not_a_crashed_doctor(monkeypatch):
    def broken(machine, ctx):
        raise KeyError("surprise")

    monkeypatch.setattr(checks, "CHECKS", (checks.check_python, broken))
    report = run_doctor("pc-cpu", machine=FakeMachine())
    assert [f.status for f in report.findings] == [OK, WARN]
    assert "broken could not finish: KeyError" in report.findings[1].message and report.can_run


# -- packages and onnxruntime ---------------------------------------------------------------------------------


def test_missing_runtime_package_is_a_fail_with_the_pip_command():
    installed = {"resonance-asr": "0.1.0", "onnxruntime": "1.32.0", "sounddevice": "0.5.6"}
    findings = checks.check_packages(FakeMachine(installed=installed), context())
    assert findings[0].status == OK and "extras installed: cpu, mic, dev" in findings[0].message
    failed = only(findings, FAIL)
    assert len(failed) == 1 and failed[0].fix == "pip install 'numpy>=1.21' 'opencc>=1.1.6'"
    assert "opencc-purepy" not in failed[0].message  # its marker does not hold on an x86 PC


def test_on_a_jetpack5_jetson_the_opencc_port_is_the_one_required():
    markers = {"platform_machine != 'aarch64' or python_version >= '3.10'": False,
               "platform_machine == 'aarch64' and python_version < '3.10'": True}  # fmt: skip
    installed = {"resonance-asr": "0.1.0", "numpy": "1.24.4", "opencc-purepy": "1.5.0"}
    findings = checks.check_packages(FakeMachine(installed=installed, markers=markers), context())
    assert not only(findings, FAIL) and "opencc-purepy 1.5.0" in findings[1].message
    assert "extras installed: none" in findings[0].message


def test_extras_are_judged_on_whole_markers_with_parentheses():
    """pip writes an extra's platform marker as '(a or b) and extra == "x"': it must be evaluated whole."""
    pytest.importorskip("packaging")
    requires = [
        "zeroconf>=0.131,<1; (platform_machine != 'aarch64' or python_version >= '3.9') and extra == 'discovery'",
        "zeroconf==0.39.4; (platform_machine == 'aarch64' and python_version < '3.9') and extra == 'discovery'",
        "nothing-like-this==1; platform_machine == 'no-such-machine' and extra == 'discovery'",
        "onnxruntime-gpu>=1.16; extra == 'gpu'",
    ]
    holds = Machine().marker_holds
    assert checks.installed_extras(requires, {"zeroconf": "0.140"}, holds) == ["discovery"]
    assert checks.installed_extras(requires, {}, holds) == []


def test_no_onnxruntime_is_a_fail_and_on_a_jetson_points_at_nvidias_wheel():
    broken = OrtBuild(
        error="the runtime needs onnxruntime, which is not installed", hint="pip install 'resonance-asr[cpu]'"
    )
    [finding] = checks.check_onnxruntime(FakeMachine(build=broken), context())
    assert finding.status == FAIL and finding.fix == "pip install 'resonance-asr[cpu]'"
    [finding] = checks.check_onnxruntime(FakeMachine(build=broken, files=JETSON_FILES), context())
    assert "NVIDIA's onnxruntime-gpu wheel" in finding.fix
    assert checks.check_providers(FakeMachine(build=broken), context()) == []


def test_onnxruntime_and_onnxruntime_gpu_together_is_a_warning_with_the_fix():
    both = OrtBuild("1.32.0", ("CPUExecutionProvider",), "", "/x", ("onnxruntime", "onnxruntime-gpu"))
    findings = checks.check_onnxruntime(FakeMachine(build=both), context("pc-cuda"))
    [warning] = only(findings, WARN)
    assert warning.fix == "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    [cpu_fix] = only(checks.check_onnxruntime(FakeMachine(build=both), context("pc-cpu")), WARN)
    assert cpu_fix.fix.endswith("pip install onnxruntime")


def test_pypis_cpu_onnxruntime_on_a_jetson_is_a_warning():
    findings = checks.check_onnxruntime(FakeMachine(files=JETSON_FILES, cpu=ARM), context("jetson-orin-nano"))
    [warning] = only(findings, WARN)
    assert "CPU-only" in warning.message and "jetson-ai-lab" in warning.fix


def test_which_provider_each_config_gets():
    findings = checks.check_providers(FakeMachine(), context("pc-cpu"))
    assert findings[0].status == OK and findings[0].message == "'pc-cpu' runs on CPU"
    assert findings[1].status == INFO and "pc-cuda → CPU (wants CUDA)" in findings[1].message
    # a CUDA config on a CPU-only build: the runtime's own message, with the [gpu] extra in it
    [warning] = only(checks.check_providers(FakeMachine(), context("pc-cuda")), WARN)
    assert "CUDA not available in this onnxruntime build" in warning.message and "[gpu]" in warning.message


def test_a_provider_that_is_built_in_but_does_not_start_names_the_missing_library():
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
    machine = FakeMachine(
        build=GPU_BUILD, sessions={wanted: SessionProbe(("CPUExecutionProvider",), ORT_LOG)}
    )
    [warning] = only(checks.check_providers(machine, context("pc-cuda")), WARN)
    assert "CUDA is in this build but did not start (libcublasLt.so.13 not found)" in warning.message
    started = FakeMachine(build=GPU_BUILD)  # the fake starts every provider the build has
    assert checks.check_providers(started, context("pc-cuda"))[0].message == "'pc-cuda' runs on CUDA"


# -- NVIDIA libraries -------------------------------------------------------------------------------------------


def test_ldd_and_ldconfig_are_read():
    linked = nvidia.parse_ldd(LDD_TENSORRT)
    assert linked["libcublasLt.so.13"] is None and linked["libcudart.so.13"].endswith("libcudart.so.13")
    grouped = nvidia.nvidia_libraries(linked)
    assert set(grouped) == {nvidia.DRIVER, nvidia.CUDA, nvidia.TENSORRT} and "libstdc++.so.6" not in str(
        grouped
    )
    assert nvidia.cuda_major(grouped) == "13" and nvidia.cudnn_soname(grouped, "13") == "libcudnn.so.9"
    assert nvidia.cudnn_soname({}, "11") == "libcudnn.so.8"
    ldconfig = (
        "2 libs found in cache\n\tlibcudnn.so.9 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcudnn.so.9\n"
    )
    assert nvidia.parse_ldconfig(ldconfig) == {"libcudnn.so.9": "/usr/lib/x86_64-linux-gnu/libcudnn.so.9"}
    assert nvidia.missing_in_log(ORT_LOG + "\n" + ORT_LOG) == ["libcublasLt.so.13"]


def test_missing_cuda_cudnn_tensorrt_each_get_their_install_command():
    machine = FakeMachine(build=GPU_BUILD, ldd={"libonnxruntime_providers_cuda.so": LDD_CUDA,
                                                "libonnxruntime_providers_tensorrt.so": LDD_TENSORRT})  # fmt: skip
    findings = checks.check_gpu_libraries(machine, context("pc-cuda"))
    by_start = {f.message.split(":")[0]: f for f in findings}
    driver = by_start["no NVIDIA driver (libcuda.so.1 not found)"]
    assert driver.status == WARN and "ubuntu-drivers" in driver.fix
    cuda = by_start["CUDA 13"]
    assert (
        cuda.status == WARN
        and "libcublasLt.so.13, libcublas.so.13, libcurand.so.10 not found" in cuda.message
    )
    assert "sudo apt install cuda-libraries-13-0" in cuda.fix
    assert by_start["cuDNN 9"].status == WARN and "libcudnn9-cuda-13" in by_start["cuDNN 9"].fix
    tensorrt = by_start["TensorRT 10"]
    assert tensorrt.status == INFO  # pc-cuda does not ask for TensorRT
    assert "libnvinfer10 libnvonnxparsers10" in tensorrt.fix
    # the Jetson configs ask for TensorRT, and on a Jetson JetPack brings all three
    jetson = FakeMachine(build=GPU_BUILD, files=JETSON_FILES, cpu=ARM, ldd=machine.ldd)
    findings = checks.check_gpu_libraries(jetson, context("jetson-orin-nano"))
    tensorrt = next(f for f in findings if f.message.startswith("TensorRT"))
    assert tensorrt.status == WARN and "sudo apt install nvidia-jetpack" in tensorrt.fix


def test_gpu_libraries_that_are_there_are_a_tick_and_a_cpu_only_setup_says_nothing():
    found_ldd = LDD_CUDA.replace("not found", "/usr/lib/x86_64-linux-gnu/libfound.so")
    machine = FakeMachine(
        build=GPU_BUILD,
        ldd={"libonnxruntime_providers_cuda.so": found_ldd},
        libraries={"libcudnn.so.9": "/usr/lib/x86_64-linux-gnu/libcudnn.so.9"},
        driver=Driver(True, "13.0", ("NVIDIA RTX 4090",)),
    )
    findings = checks.check_gpu_libraries(machine, context("pc-cuda"))
    assert findings[0].message == "NVIDIA driver 13.0: NVIDIA RTX 4090"
    assert [f.status for f in findings if not f.message.startswith("could not")] == [OK, OK, OK]
    assert checks.check_gpu_libraries(FakeMachine(), context("pc-cpu")) == []


# -- Jetson, CPU, microphone, memory ----------------------------------------------------------------------------


def test_jetson_release_model_and_power_mode():
    assert nvidia.parse_tegra_release(JETSON_FILES["/etc/nv_tegra_release"]) == ("36.4.3", 6)
    assert nvidia.parse_tegra_release("# R35 (release), REVISION: 4.1, GCID: 1") == ("35.4.1", 5)
    assert nvidia.parse_tegra_release("garbage") is None
    assert nvidia.jetson_config_for("NVIDIA Jetson AGX Orin Developer Kit") == "jetson-agx-orin"
    assert nvidia.jetson_config_for(JETSON_FILES["/proc/device-tree/model"]) == "jetson-orin-nano"
    assert nvidia.parse_nvpmodel("NV Power Mode: 15W\n2\n") == ("15W", 2)


def test_a_jetson_with_the_wrong_python_config_and_power_mode_gets_three_warnings():
    machine = FakeMachine(files=JETSON_FILES, cpu=ARM, commands={"nvpmodel": "NV Power Mode: 15W\n2\n"})
    findings = checks.check_jetson(machine, context("pc-cpu"))
    assert (
        findings[0].status == OK and "Orin Nano" in findings[0].message and "JetPack 6" in findings[0].message
    )
    fixes = [f.fix for f in only(findings, WARN)]
    assert fixes == [
        "python3.10 -m venv ~/resonance   # and install there",
        "--config jetson-orin-nano",
        "sudo nvpmodel -m 0 && sudo jetson_clocks   # mode 0 is the maximum on most modules",
    ]
    right = FakeMachine(
        files=JETSON_FILES, cpu=ARM, python="3.10.12", commands={"nvpmodel": "NV Power Mode: MAXN\n0"}
    )
    assert [f.status for f in checks.check_jetson(right, context("jetson-orin-nano"))] == [OK, OK]


def test_a_jetson_config_on_a_pc_is_a_warning_and_a_pc_config_on_a_pc_says_nothing():
    [warning] = checks.check_jetson(FakeMachine(), context("jetson-agx-orin"))
    assert warning.status == WARN and "pc-cpu" in warning.fix
    assert checks.check_jetson(FakeMachine(), context("pc-cpu")) == []


def test_cpu_line_names_the_int8_preset_and_a_config_made_for_another_cpu_is_a_warning():
    avx2 = FakeMachine(cpu=CpuInfo("x86_64", "Intel Core i5-12400", ("avx2", "fma"), 12))
    findings = checks.check_cpu(avx2, context("pc-cpu"))
    assert (
        findings[0].message
        == "Intel Core i5-12400, 12 CPU(s), AVX2: int8 bundles for this CPU: --int8-preset avx2"
    )
    for_avx512 = CONFIGS["pc-cpu"].replace(int8_preset="avx512")
    [warning] = only(checks.check_cpu(avx2, Context(for_avx512, CONFIGS)), WARN)
    assert "quantised for avx512; this CPU wants avx2" in warning.message
    assert "--int8-preset arm64" in checks.check_cpu(FakeMachine(cpu=ARM), context())[0].message


@pytest.mark.parametrize(
    "mic, status, fix",
    [
        (Microphone("ok", ("USB mic", "HDMI"), "USB mic"), OK, ""),
        (Microphone("not-installed"), WARN, "pip install 'resonance-asr[mic]'"),
        (
            Microphone("no-portaudio", error="PortAudio library not found"),
            WARN,
            "sudo apt install libportaudio2",
        ),
        (
            Microphone("ok", ()),
            WARN,
            "plug in a USB microphone; `python -m sounddevice` lists what PortAudio sees",
        ),
    ],
)
def test_microphone(mic, status, fix):
    [finding] = checks.check_microphone(FakeMachine(mic=mic), context())
    assert (finding.status, finding.fix) == (status, fix)


def test_memory_and_low_disk():
    findings = checks.check_memory_and_disk(FakeMachine(disk_free=300 << 20), context())
    assert findings[0].message == "memory: 20.0 GiB available of 24.0 GiB"
    assert findings[1].status == WARN and "300 MB free" in findings[1].message


# -- bundles and network ------------------------------------------------------------------------------------------


def test_bundles_that_the_server_would_skip_are_fails(tiny_bundle, tmp_path):
    from resonance.runtime.bundle import load_manifest
    from resonance.runtime.doctor.machine import BundleLoad

    manifest = load_manifest(tiny_bundle)
    loaded = BundleLoad("p1", ("CPUExecutionProvider",), 150.0, manifest)
    machine = FakeMachine(bundles=Bundles([loaded], {"p2": "bundle file encoder.onnx is corrupt"}, 1 << 30))
    findings = checks.check_bundles(machine, context("pc-cpu", tmp_path))
    assert findings[0].status == OK and findings[0].message.startswith("p1: ")
    assert "fp32" in findings[0].message and "loads on CPU, +150 MB of memory" in findings[0].message
    # the base model by its name, not the folder export read it from (the demo's is a cache path)
    base = Path(manifest.base_model)
    assert findings[0].message.startswith(f"p1: {base.name}, not fine-tuned, fp32, ")
    assert str(base) not in findings[0].message
    # the runtime's own advice: an fp32 bundle on a config that expects int8
    assert any(f.status == WARN and "expects int8" in f.message for f in findings)
    [failed] = only(findings, FAIL)
    assert failed.message == "p2: the server would skip it: bundle file encoder.onnx is corrupt"
    # memory: 150 MB of 1 GiB is fine; of 160 MB it is not
    assert findings[-1].status == OK
    tight = FakeMachine(bundles=Bundles([loaded], {}, 160 << 20))
    assert checks.check_bundles(tight, context("pc-cpu", tmp_path))[-1].status == WARN
    empty = FakeMachine(bundles=Bundles([], {}, 1 << 30))
    [none] = checks.check_bundles(empty, context("pc-cpu", tmp_path))
    assert none.status == FAIL and "no bundles" in none.message
    assert checks.check_bundles(FakeMachine(), context())[0].status == INFO  # no --models
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "train_config.json").write_text("{}", encoding="utf-8")
    [wrong] = checks.check_bundles(empty, context("pc-cpu", adapter))
    assert wrong.status == FAIL and "is an adapter (made by `resonance train`)" in wrong.message
    assert f"resonance export --adapter {adapter}" in wrong.fix


def test_network_lines():
    [ok] = checks.check_network(FakeMachine(), context())
    assert ok.message == (
        "LAN address 192.168.1.20: the caregiver's page is https://192.168.1.20:8000/; "
        "apps without the CA: http://192.168.1.20:8080/"
    )
    [alone] = checks.check_network(FakeMachine(lan=["127.0.0.1"]), context())
    assert alone.status == WARN and "cannot reach" in alone.message
    loopback = Context(CONFIGS["pc-cpu"].replace(host="127.0.0.1"), CONFIGS)
    assert "listens on 127.0.0.1 only" in checks.check_network(FakeMachine(), loopback)[0].message
    busy = checks.check_network(FakeMachine(port_free=False), context())
    assert busy[1].status == WARN and "port 8000 is in use" in busy[1].message


def test_https_reports_the_local_ca_and_whether_the_certificate_fits_this_machine(tmp_path):
    from resonance.runtime.server import tls

    [none_yet] = checks.check_https(FakeMachine(tls_dir=tmp_path), context())
    assert none_yet.status == OK and "no local CA yet" in none_yet.message
    made = tls.local_certificate(tmp_path, *tls.server_names(["192.168.1.20"]))
    ca, fits = checks.check_https(FakeMachine(tls_dir=tmp_path), context())
    assert ca.status == OK and ca.data["ca_fingerprint"] == made.fingerprint
    assert fits.status == OK and "covers this machine's names" in fits.message and fits.data["missing"] == []
    _, moved = checks.check_https(FakeMachine(tls_dir=tmp_path, lan=["10.0.0.5"]), context())
    assert "it lacks 10.0.0.5" in moved.message and "issues a new one" in moved.message
    loopback = Context(CONFIGS["pc-cpu"].replace(host="127.0.0.1"), CONFIGS)
    [plain] = checks.check_https(FakeMachine(tls_dir=tmp_path), loopback)
    assert plain.status == INFO and "plain http" in plain.message
    (tmp_path / tls.CA_CERT).write_text("not a certificate")
    [broken] = checks.check_https(FakeMachine(tls_dir=tmp_path), context())
    assert broken.status == FAIL and "will not start over HTTPS" in broken.message and "move" in broken.fix


def test_the_config_that_suits_the_machine_is_chosen_when_none_is_given():
    assert checks.choose_config(FakeMachine())[0] == "pc-cpu"
    gpu = FakeMachine(build=GPU_BUILD, driver=Driver(True, "13.0", ("RTX 4090",)))
    assert checks.choose_config(gpu)[0] == "pc-cuda"
    assert checks.choose_config(FakeMachine(build=GPU_BUILD))[0] == "pc-cpu"  # the wheel, but no GPU
    agx = dict(JETSON_FILES, **{"/proc/device-tree/model": "NVIDIA Jetson AGX Orin Developer Kit"})
    assert checks.choose_config(FakeMachine(files=agx, cpu=ARM))[0] == "jetson-agx-orin"
    report = run_doctor(machine=FakeMachine(files=JETSON_FILES, cpu=ARM))
    assert report.config == "jetson-orin-nano" and report.config_source.startswith("chosen")


# -- the real machine ----------------------------------------------------------------------------------------------


def test_the_probe_model_is_what_onnx_helper_makes_and_starts_on_the_cpu(capfd):
    onnx = pytest.importorskip("onnx", reason="onnx comes with the [export] extra")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="resonance-doctor"
    )
    model.ir_version = 7
    onnx.checker.check_model(model)
    assert model.SerializeToString() == PROBE_MODEL
    probe = Machine().open_session(["CPUExecutionProvider"])
    assert probe.in_use == ("CPUExecutionProvider",) and not probe.error
    print("stdout still works")  # the captured file descriptors were put back
    assert "stdout still works" in capfd.readouterr().out


def test_real_bundles_load_as_the_server_loads_them(tiny_bundle, tmp_path):
    models = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, models / "p1")
    shutil.copytree(tiny_bundle, models / "renamed")  # manifest says p1: the server refuses the folder
    result = Machine().load_bundles(models, CONFIGS["pc-cpu"])
    [loaded] = result.loaded
    assert loaded.patient == "p1" and loaded.providers[0] == "CPUExecutionProvider"
    # >= 0: in a long-lived process (this test run) the load may reuse memory freed before; the CLI test below
    # loads in a fresh process, where it must grow
    assert loaded.rss_mb is not None and loaded.rss_mb >= 0
    assert list(result.failed) == ["renamed"] and "patient 'p1'" in result.failed["renamed"]


def test_doctor_on_this_machine_as_a_user_runs_it(run_cli, tiny_bundle, tmp_path):
    models = tmp_path / "bundles"
    shutil.copytree(tiny_bundle, models / "p1")
    proc = run_cli("doctor", "--config", "pc-cpu", "--models", models, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["config"] == "pc-cpu" and report["can_run"] is True
    topics = {f["topic"] for f in report["findings"]}
    assert {"system", "packages", "onnxruntime", "cpu", "microphone", "memory and disk", "bundles"} <= topics
    runs = next(f for f in report["findings"] if f["message"].startswith("'pc-cpu' runs on"))
    assert runs["status"] == "ok" and runs["in_use"] == ["CPUExecutionProvider"]
    bundle = next(f for f in report["findings"] if f.get("patient") == "p1")
    assert bundle["status"] == "ok" and bundle["precision"] == "fp32" and bundle["rss_mb"] > 0

    text = run_cli("doctor", "--models", tmp_path / "empty-does-not-exist")
    assert text.returncode == 1, text.stdout + text.stderr
    assert "✗" in text.stdout and "cannot run here" in text.stdout
    assert run_cli("doctor", "--config", "no-such-box").returncode == 2
