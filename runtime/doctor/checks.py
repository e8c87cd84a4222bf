"""The doctor's checks: each a small function ``(machine, context) -> [Finding]``, listed in ``CHECKS``.

A check reads facts only through ``machine`` (runtime/doctor/machine.py, or a fake in the tests) and returns
what it found, judged against the device config being checked: ✗ only for what stops that config from running.
A check with nothing to say about this machine returns [] (no Jetson lines on a PC).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.doctor import nvidia
from resonance.runtime.doctor.findings import FAIL, INFO, OK, WARN, Finding

CUDA_EP, TENSORRT_EP, CPU_EP = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT_EP, CUDA_EP)
# onnxruntime's GPU providers are shared libraries beside it; these are the ones whose libraries we check.
PROVIDER_LIBRARIES = {
    CUDA_EP: "libonnxruntime_providers_cuda.so",
    TENSORRT_EP: "libonnxruntime_providers_tensorrt.so",
}
MiB, GiB = 1 << 20, 1 << 30
LOW_DISK = 1 * GiB  # a re-export writes a whole bundle beside the old one; TensorRT caches engines; --retain
MEMORY_HEADROOM = (
    0.8  # bundles using more than this share of the available memory leave too little for requests
)
_EXTRA = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?")


@dataclass(frozen=True)
class Context:
    config: DeviceConfig  # the device config judged
    configs: Dict[str, DeviceConfig]  # every packaged config, for the line about the others
    models: Optional[Path] = None  # --models: the bundles to load


Check = Callable[[Any, Context], List[Finding]]


def short(provider: str) -> str:
    """ "TensorrtExecutionProvider" -> "TensorRT", as people write it."""
    name = provider[: -len("ExecutionProvider")] if provider.endswith("ExecutionProvider") else provider
    return {"Tensorrt": "TensorRT"}.get(name, name)


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MB"


# -- system and packages ------------------------------------------------------------------------------------


def check_python(machine: Any, ctx: Context) -> List[Finding]:
    py = machine.python()
    message = f"Python {py['version']} ({py['implementation']}) on {py['system']} {py['machine']}"
    return [Finding("system", OK, message, data={"python": py})]


def split_requirement(text: str) -> Tuple[str, str, str]:
    """``"onnxruntime>=1.16; extra == 'cpu'"`` -> ("onnxruntime", ">=1.16", "extra == 'cpu'")."""
    spec, _, marker = text.partition(";")
    match = _NAME.match(spec)
    name = match.group(1) if match else spec.strip()
    return name, spec[match.end() :].strip() if match else "", marker.strip()


def installed_extras(requirements: Sequence[str], installed: Dict[str, str], holds: Callable) -> List[str]:
    """Extras of resonance-asr whose every requirement (that applies here) is installed."""
    from resonance.runtime.doctor.machine import DISTRIBUTION, normalize

    by_extra: Dict[str, List[str]] = {}
    for text in requirements:
        _, _, marker = split_requirement(text)
        found = _EXTRA.search(marker)
        if found:
            by_extra.setdefault(found.group(1), []).append(text)

    def satisfied(extra: str, seen: Tuple[str, ...] = ()) -> bool:
        for text in by_extra.get(extra, []):
            name, _, marker = split_requirement(text)
            if holds(marker, extra) is False:
                continue  # e.g. a platform marker that does not apply here
            if normalize(name) == DISTRIBUTION:  # "resonance-asr[export,mic]": those extras, recursively
                inner = re.search(r"\[([^\]]*)\]", text)
                nested = [e.strip() for e in inner.group(1).split(",")] if inner else []
                if any(e in seen or not satisfied(e, (*seen, extra)) for e in nested):
                    return False
            elif normalize(name) not in installed:
                return False
        return True

    return [extra for extra in by_extra if satisfied(extra)]


def check_packages(machine: Any, ctx: Context) -> List[Finding]:
    from resonance.runtime.doctor.machine import DISTRIBUTION, normalize

    installed = machine.distributions()
    requirements = machine.requirements()
    if DISTRIBUTION not in installed:
        return [
            Finding(
                "packages",
                WARN,
                f"{DISTRIBUTION} is not installed as a package (running from a source folder?): "
                "its dependencies cannot be checked",
                "pip install -e .   # in the source folder",
            )
        ]
    missing, present = [], {}
    for text in requirements:
        name, spec, marker = split_requirement(text)
        if "extra" in marker:
            continue
        if marker and machine.marker_holds(marker) is False:
            continue  # not for this platform (e.g. opencc-purepy outside a JetPack 5 Jetson)
        version = installed.get(normalize(name))
        if version is None:
            if marker and machine.marker_holds(marker) is None:
                continue  # can't tell whether it applies here without `packaging`: don't accuse
            missing.append(f"{name}{spec}")
        else:
            present[name] = version
    extras = installed_extras(requirements, installed, machine.marker_holds)
    findings = [
        Finding(
            "packages",
            OK,
            f"{DISTRIBUTION} {installed[DISTRIBUTION]}; extras installed: {', '.join(extras) or 'none'}",
            data={"version": installed[DISTRIBUTION], "extras": extras},
        )
    ]
    if missing:
        findings.append(
            Finding(
                "packages",
                FAIL,
                f"runtime package(s) missing: {', '.join(missing)}",
                "pip install " + " ".join(f"'{m}'" for m in missing),
                {"missing": missing},
            )
        )
    else:
        versions = ", ".join(f"{name} {version}" for name, version in present.items())
        findings.append(Finding("packages", OK, f"runtime packages: {versions}", data={"packages": present}))
    return findings


# -- onnxruntime and its providers --------------------------------------------------------------------------


def check_onnxruntime(machine: Any, ctx: Context) -> List[Finding]:
    build = machine.onnxruntime()
    on_jetson = jetson(machine) is not None
    if build.error:
        fix = build.hint
        if on_jetson:
            fix = "install NVIDIA's onnxruntime-gpu wheel for your JetPack (README, 'On a Jetson')"
        return [Finding("onnxruntime", FAIL, build.error, fix, {"distributions": list(build.distributions)})]
    kind = f"CUDA {build.cuda_version} build" if build.cuda_version else "CPU build"
    kind += f" from {' + '.join(build.distributions)}" if build.distributions else ""
    findings = [
        Finding(
            "onnxruntime",
            OK,
            f"onnxruntime {build.version} ({kind}): providers {', '.join(short(p) for p in build.providers)}",
            data={"version": build.version, "providers": list(build.providers), "cuda": build.cuda_version},
        )
    ]
    gpu_wheels = [d for d in build.distributions if d.startswith("onnxruntime-gpu")]
    if "onnxruntime" in build.distributions and gpu_wheels:
        wanted = "onnxruntime-gpu" if any(p in GPU_PROVIDERS for p in ctx.config.providers) else "onnxruntime"
        findings.append(
            Finding(
                "onnxruntime",
                WARN,
                "both onnxruntime and onnxruntime-gpu are installed: they share one folder, the last installed "
                "wins and removing either breaks the other",
                f"pip uninstall -y onnxruntime onnxruntime-gpu && pip install {wanted}",
                {"distributions": list(build.distributions)},
            )
        )
    if on_jetson and CUDA_EP not in build.providers:
        findings.append(
            Finding(
                "onnxruntime",
                WARN,
                "this onnxruntime has no CUDA: PyPI's aarch64 wheel is CPU-only",
                "pip uninstall -y onnxruntime && install NVIDIA's onnxruntime-gpu wheel for your JetPack "
                "(JetPack 6: pip install onnxruntime-gpu --index-url https://pypi.jetson-ai-lab.io/jp6/cu126)",
            )
        )
    return findings


def _probe(machine: Any, providers: Sequence[str], cache: Dict[Tuple[str, ...], Any]) -> Any:
    key = tuple(providers)
    if key not in cache:
        cache[key] = machine.open_session(key)
    return cache[key]


def check_providers(machine: Any, ctx: Context) -> List[Finding]:
    """Which provider the judged config (and each other packaged one) really gets: a session is started."""
    from resonance.runtime.sessions import unavailable_message

    build = machine.onnxruntime()
    if build.error:
        return []
    probes: Dict[Tuple[str, ...], Any] = {}
    config = ctx.config
    probe = _probe(machine, config.providers, probes)
    data = {"wanted": list(config.providers), "in_use": list(probe.in_use)}
    if probe.error or not probe.in_use:
        return [
            Finding(
                "onnxruntime",
                FAIL,
                f"onnxruntime cannot start a session on {', '.join(map(short, config.providers))}: {probe.error}",
                "reinstall onnxruntime (pip install --force-reinstall onnxruntime, or onnxruntime-gpu)",
                data,
            )
        ]
    first, wanted = probe.in_use[0], config.providers[0]
    if first == wanted:
        findings = [Finding("onnxruntime", OK, f"'{config.name}' runs on {short(first)}", data=data)]
    elif wanted not in build.providers:
        missing = [p for p in config.providers if p not in build.providers]
        message = f"'{config.name}': {unavailable_message(missing, fallback=first)}"
        findings = [Finding("onnxruntime", WARN, message, data=data)]
    else:
        libs = nvidia.missing_in_log(probe.log)
        why = f" ({', '.join(libs)} not found)" if libs else ""
        findings = [
            Finding(
                "onnxruntime",
                WARN,
                f"'{config.name}' would run on {short(first)}: {short(wanted)} is in this build but did not "
                f"start{why}",
                "see the gpu lines below",
                {**data, "log": probe.log.strip().splitlines()[-5:]},
            )
        ]
    others = []
    for name, other in sorted(ctx.configs.items()):
        if name == config.name:
            continue
        got = _probe(machine, other.providers, probes).in_use
        note = "" if got and got[0] == other.providers[0] else f" (wants {short(other.providers[0])})"
        others.append(f"{name} → {short(got[0]) if got else 'nothing'}{note}")
    if others:
        findings.append(Finding("onnxruntime", INFO, "other device configs here: " + "; ".join(others)))
    return findings


def check_gpu_libraries(machine: Any, ctx: Context) -> List[Finding]:
    """The NVIDIA driver and the CUDA / cuDNN / TensorRT libraries the config's GPU providers need."""
    build = machine.onnxruntime()
    wanted = [p for p in ctx.config.providers if p in GPU_PROVIDERS]
    built = [p for p in GPU_PROVIDERS if p in build.providers]
    if build.error or not (wanted or built):
        return []
    on_jetson = jetson(machine) is not None
    missing_status = WARN if wanted else INFO  # a config without GPU providers runs fine without them
    findings = []
    driver = machine.nvidia_driver()
    if driver.found and driver.devices:
        message = f"NVIDIA driver {driver.version}: {', '.join(driver.devices)}"
        findings.append(
            Finding("gpu", OK, message, data={"driver": driver.version, "gpus": list(driver.devices)})
        )
    elif driver.found:
        findings.append(Finding("gpu", missing_status, f"NVIDIA driver found but no GPU: {driver.error}"))
    else:
        findings.append(
            Finding(
                "gpu",
                missing_status,
                "no NVIDIA driver (libcuda.so.1 not found): no GPU can be used",
                nvidia.fix_for(nvidia.DRIVER, [], on_jetson),
            )
        )
    needed: Dict[str, Dict[str, Optional[str]]] = {}  # family -> soname -> path
    needed_by: Dict[str, List[str]] = {}  # family -> the providers that need it
    for provider in built:
        text = machine.linked_libraries(str(Path(build.capi_dir) / PROVIDER_LIBRARIES[provider]))
        if text is None:
            findings.append(
                Finding("gpu", INFO, f"could not list the libraries {short(provider)} needs (no ldd)")
            )
            continue
        libraries = nvidia.nvidia_libraries(nvidia.parse_ldd(text))
        if provider == CUDA_EP:  # cuDNN is loaded at run time, not linked: look it up like the loader would
            soname = nvidia.cudnn_soname(libraries, nvidia.cuda_major(libraries, build.cuda_version))
            libraries.setdefault(nvidia.CUDNN, {})[soname] = machine.find_library(soname)
        for name, sonames in libraries.items():
            if name != nvidia.DRIVER:
                needed.setdefault(name, {}).update(sonames)
                needed_by.setdefault(name, []).append(provider)
    cuda = nvidia.cuda_major(needed, build.cuda_version)
    for name in (nvidia.CUDA, nvidia.CUDNN, nvidia.TENSORRT):
        sonames = needed.get(name)
        if not sonames:
            continue
        versions = sorted({nvidia.major(s) for s in sonames if nvidia.major(s)})
        label = f"{name} {'/'.join(versions)}" if name != nvidia.CUDA else f"CUDA {cuda}"
        users = " and ".join(short(p) for p in needed_by[name])
        users = f"the {users} provider{'s' if len(needed_by[name]) > 1 else ''}"
        absent = [s for s, path in sonames.items() if path is None]
        data = {"family": name, "libraries": sonames}
        if not absent:
            folders = sorted({str(Path(p).parent) for p in sonames.values() if p})
            findings.append(Finding("gpu", OK, f"{label} libraries found ({', '.join(folders)})", data=data))
            continue
        relevant = any(p in wanted for p in needed_by[name])
        findings.append(
            Finding(
                "gpu",
                missing_status if relevant else INFO,
                f"{label}: {', '.join(absent)} not found (needed by {users})",
                nvidia.fix_for(name, list(sonames), on_jetson, cuda, build.cuda_version),
                data,
            )
        )
    return findings


# -- the device itself --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jetson:
    model: str  # "NVIDIA Jetson Orin Nano Developer Kit"
    l4t: str  # "36.4.3"
    jetpack: Optional[int]  # 6


def jetson(machine: Any) -> Optional[Jetson]:
    """This machine as a Jetson (L4T's release file, the device tree's model name), or None."""
    release = machine.read_text("/etc/nv_tegra_release")
    model = (machine.read_text("/proc/device-tree/model") or "").replace("\x00", "").strip()
    if release is None and "jetson" not in model.lower():
        return None
    parsed = nvidia.parse_tegra_release(release or "")
    return Jetson(model or "NVIDIA Jetson", parsed[0] if parsed else "", parsed[1] if parsed else None)


def check_jetson(machine: Any, ctx: Context) -> List[Finding]:
    found = jetson(machine)
    name = ctx.config.name
    if found is None:
        if name.startswith("jetson"):
            return [
                Finding(
                    "jetson",
                    WARN,
                    f"'{name}' is a Jetson's config and this is not a Jetson",
                    "resonance doctor --config pc-cpu (or pc-cuda with an NVIDIA GPU)",
                )
            ]
        return []
    release = f"L4T {found.l4t}" + (f", JetPack {found.jetpack}" if found.jetpack else "")
    data = {"model": found.model, "l4t": found.l4t, "jetpack": found.jetpack}
    findings = [Finding("jetson", OK, f"{found.model} ({release})", data=data)]
    python = ".".join(machine.python()["version"].split(".")[:2])
    expected = nvidia.PYTHON_FOR_JETPACK.get(found.jetpack or 0)
    if found.jetpack is not None and found.jetpack < 5:
        findings.append(
            Finding("jetson", FAIL, f"JetPack {found.jetpack} is too old", "flash JetPack 6 (or 5)")
        )
    elif expected and python != expected:
        findings.append(
            Finding(
                "jetson",
                WARN,
                f"Python {python} is not JetPack {found.jetpack}'s {expected}: NVIDIA's onnxruntime-gpu wheels "
                f"are built for {expected}",
                f"python{expected} -m venv ~/resonance   # and install there",
            )
        )
    suited = nvidia.jetson_config_for(found.model)
    if name != suited:
        findings.append(
            Finding("jetson", WARN, f"'{name}' is not the config for a {found.model}", f"--config {suited}")
        )
    mode = nvidia.parse_nvpmodel(machine.run(["nvpmodel", "-q"]) or "")
    if mode is None:
        findings.append(Finding("jetson", INFO, "power mode unknown (nvpmodel -q gave nothing)"))
    elif mode[1] != 0:
        findings.append(
            Finding(
                "jetson",
                WARN,
                f"power mode {mode[0]} ({mode[1]}): transcriptions are faster in the maximum mode",
                "sudo nvpmodel -m 0 && sudo jetson_clocks   # mode 0 is the maximum on most modules",
            )
        )
    else:
        findings.append(Finding("jetson", OK, f"power mode {mode[0]} (0, the maximum on most modules)"))
    return findings


def check_cpu(machine: Any, ctx: Context) -> List[Finding]:
    from resonance.cpu import int8_preset_for

    cpu = machine.cpu()
    preset = int8_preset_for(cpu.machine, cpu.flags)
    features = [label for flag, label in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"),
                                          ("asimddp", "dot product")) if flag in cpu.flags]  # fmt: skip
    described = f"{cpu.model or cpu.machine}, {cpu.count} CPU(s)" + (
        f", {' '.join(features)}" if features else ""
    )
    data = {"model": cpu.model, "cpus": cpu.count, "machine": cpu.machine, "int8_preset": preset}
    findings = [
        Finding("cpu", OK, f"{described}: int8 bundles for this CPU: --int8-preset {preset}", data=data)
    ]
    config = ctx.config
    if config.precision == "int8" and config.int8_preset != preset:
        findings.append(
            Finding(
                "cpu",
                WARN,
                f"'{config.name}' expects int8 bundles quantised for {config.int8_preset}; this CPU wants {preset}",
                f"int8_preset: auto (or {preset}) in the device config",
            )
        )
    return findings


def check_microphone(machine: Any, ctx: Context) -> List[Finding]:
    """Only `resonance listen` and `data record` use a microphone: never a ✗."""
    mic = machine.microphone()
    use = "(resonance listen / data record)"
    if mic.state == "not-installed":
        return [
            Finding(
                "microphone", WARN, f"no sounddevice: no microphone {use}", "pip install 'resonance-asr[mic]'"
            )
        ]
    if mic.state == "no-portaudio":
        return [
            Finding(
                "microphone",
                WARN,
                f"sounddevice is installed but the PortAudio library is not: no microphone {use}",
                "sudo apt install libportaudio2",
            )
        ]
    if mic.state != "ok":
        return [Finding("microphone", WARN, f"PortAudio cannot list the audio devices: {mic.error}")]
    if not mic.inputs:
        return [
            Finding(
                "microphone",
                WARN,
                f"no microphone found {use}",
                "plug in a USB microphone; `python -m sounddevice` lists what PortAudio sees",
            )
        ]
    default = mic.default or mic.inputs[0]
    return [Finding("microphone", OK, f"microphone: {default} ({len(mic.inputs)} input device(s))")]


def check_memory_and_disk(machine: Any, ctx: Context) -> List[Finding]:
    findings = []
    memory = machine.memory()
    if memory.get("MemAvailable") and memory.get("MemTotal"):
        message = f"memory: {_gib(memory['MemAvailable'])} available of {_gib(memory['MemTotal'])}"
        findings.append(Finding("memory and disk", OK, message, data={"memory": memory}))
    else:
        findings.append(Finding("memory and disk", INFO, "memory: unknown (no /proc/meminfo)"))
    where = str(ctx.models) if ctx.models and ctx.models.is_dir() else "."
    free = machine.disk_free(where)
    if free is not None:
        status, fix = OK, ""
        if free < LOW_DISK:
            status, fix = WARN, "free some space: a re-export, TensorRT's engine cache and --retain need room"
        message = f"disk: {_gib(free)} free in {where}"
        findings.append(Finding("memory and disk", status, message, fix, {"disk_free": free}))
    return findings


def check_bundles(machine: Any, ctx: Context) -> List[Finding]:
    """Load every bundle of --models as the server would; their memory against what is available."""
    from resonance.errors import ResonanceError
    from resonance.runtime.bundle import adapter_as_models, describe_model, is_adapter
    from resonance.runtime.device_sessions import precision_advice

    if ctx.models is None:
        return [
            Finding(
                "bundles", INFO, "no bundles checked: pass --models DIR (the folder `resonance serve` gets)"
            )
        ]
    try:
        result = machine.load_bundles(ctx.models, ctx.config)
    except ResonanceError as exc:
        return [Finding("bundles", FAIL, exc.message, exc.hint)]
    findings = []
    for bundle in result.loaded:
        manifest = bundle.manifest
        made_for = manifest.quantization.get("int8_preset")
        kind = f"{manifest.precision}" + (f" for {made_for}" if made_for else "")
        size = sum(int(entry.get("bytes", 0)) for entry in manifest.files.values())
        grown = f", +{bundle.rss_mb:.0f} MB of memory" if bundle.rss_mb is not None else ""
        message = (
            f"{bundle.patient}: {describe_model(manifest)}, {kind}, {size / MiB:.0f} MB, "
            f"loads on {', '.join(short(p) for p in bundle.providers)}{grown}"
        )
        data = {
            "patient": bundle.patient,
            "precision": manifest.precision,
            "bytes": size,
            "rss_mb": bundle.rss_mb,
        }
        findings.append(Finding("bundles", OK, message, data=data))
        for advice in precision_advice(bundle.patient, manifest, ctx.config):
            findings.append(Finding("bundles", WARN, advice))
    for folder, why in sorted(result.failed.items()):
        message = f"{folder}: the server would skip it: {why}"
        fix = result.fixes.get(folder, "")
        findings.append(Finding("bundles", FAIL, message, fix, data={"folder": folder}))
    # An adapter passed as --models: what `resonance serve` says too (runtime/bundle.py adapter_as_models).
    if not result.loaded and is_adapter(ctx.models):
        error = adapter_as_models(ctx.models)
        findings.append(Finding("bundles", FAIL, error.message, error.hint))
    elif not result.loaded and not result.failed:
        findings.append(
            Finding(
                "bundles",
                FAIL,
                f"no bundles in {ctx.models}: the server would have no patient",
                "copy the folders made by `resonance export --out bundles/<patient>` into it",
            )
        )
    used = sum(b.rss_mb or 0 for b in result.loaded) * MiB
    if result.loaded and result.available_before:
        message = f"the bundles take {_gib(used)} of the {_gib(result.available_before)} that was available"
        status = WARN if used > MEMORY_HEADROOM * result.available_before else OK
        fix = (
            "fewer bundles in this folder, or int8/fp16 bundles (resonance export --quantize)"
            if status == WARN
            else ""
        )
        findings.append(Finding("bundles", status, message, fix))
    return findings


def check_network(machine: Any, ctx: Context) -> List[Finding]:
    """How the caregiver's phone reaches the server: the LAN address, the page's URL, the port."""
    from resonance.runtime.server.https import wants_tls

    config = ctx.config
    findings = []
    addresses = [a for a in machine.lan_addresses() if not a.startswith("127.")]
    if config.host.startswith("127.") or config.host == "localhost":
        findings.append(
            Finding(
                "network",
                WARN,
                f"'{config.name}' listens on {config.host} only: the phone cannot reach it",
                "host: 0.0.0.0 in the device config (or resonance serve --host 0.0.0.0)",
            )
        )
    elif addresses:
        tls = wants_tls(config.host)
        page = f"{'https' if tls else 'http'}://{addresses[0]}:{config.port}/"
        apps = (
            f"; apps without the CA: http://{addresses[0]}:{config.http_port}/"
            if tls and config.http_port
            else ""
        )
        findings.append(
            Finding(
                "network",
                OK,
                f"LAN address {', '.join(addresses)}: the caregiver's page is {page}{apps}",
                data={"lan": addresses, "page": page},
            )
        )
    else:
        findings.append(
            Finding(
                "network",
                WARN,
                "no LAN address: the caregiver's phone cannot reach this machine",
                "connect it to the home network (Wi-Fi or cable), then run the doctor again",
            )
        )
    if not machine.port_free(config.host, config.port):
        findings.append(
            Finding(
                "network",
                WARN,
                f"port {config.port} is in use (is `resonance serve` already running?)",
                "stop the other server, or resonance serve --port N",
            )
        )
    return findings


def check_https(machine: Any, ctx: Context) -> List[Finding]:
    """The phone's secure context: the local CA it trusts once, and the server certificate for this machine's
    names and addresses (`resonance serve` makes and renews both; this only reports)."""
    from resonance.errors import ResonanceError
    from resonance.runtime.server import tls
    from resonance.runtime.server.https import wants_tls

    config = ctx.config
    if not wants_tls(config.host):
        return [
            Finding(
                "https", INFO, f"'{config.name}' serves plain http on {config.host} (loopback needs no HTTPS)"
            )
        ]
    folder = machine.tls_dir()
    ca_file, server_file = folder / tls.CA_CERT, folder / tls.SERVER_CERT
    try:
        tls.require_cryptography()
    except ResonanceError as exc:
        return [Finding("https", FAIL, f"{exc.message}: the phone's page gets no microphone", exc.hint)]
    if not ca_file.is_file():
        return [
            Finding(
                "https",
                OK,
                f"no local CA yet in {folder}: the first `resonance serve` makes it and the server certificate",
                "then trust it once on the phone (README: Trust the server on a phone)",
            )
        ]
    try:
        ca_fingerprint = tls.certificate_fingerprint(ca_file)
    except ResonanceError as exc:
        return [
            Finding(
                "https",
                FAIL,
                f"{exc.message}: `resonance serve` will not start over HTTPS with this local CA",
                f"restore it from a backup; or move {folder} away (every phone then trusts the new CA once)",
            )
        ]
    findings = [
        Finding(
            "https",
            OK,
            f"local CA {ca_file} (SHA-256 {ca_fingerprint[:23]}…): the phone trusts it once",
            data={"ca_file": str(ca_file), "ca_fingerprint": ca_fingerprint},
        )
    ]
    if not server_file.is_file():
        return [*findings, Finding("https", OK, "no server certificate yet: `resonance serve` issues one")]
    dns_names, ips = tls.server_names([a for a in machine.lan_addresses() if not a.startswith("127.")])
    try:
        fit = tls.check_certificate(server_file, dns_names, ips)
    except ResonanceError as exc:
        return [*findings, Finding("https", WARN, exc.message, exc.hint)]
    renew = fit.missing or fit.days_left < tls.RENEW_BEFORE_DAYS
    why = f"it lacks {', '.join(fit.missing)}" if fit.missing else f"it expires on {fit.not_after:%Y-%m-%d}"
    message = (
        f"server certificate: {why}; the next `resonance serve` issues a new one (the phone keeps trusting the CA)"
        if renew
        else f"server certificate covers this machine's names and addresses until {fit.not_after:%Y-%m-%d}"
    )
    data = {"names": list(fit.names), "missing": list(fit.missing), "not_after": f"{fit.not_after:%Y-%m-%d}"}
    return [*findings, Finding("https", OK, message, data=data)]


# The checks in the order they are printed. A new one is a function above and a line here.
CHECKS: Tuple[Check, ...] = (
    check_python,
    check_packages,
    check_onnxruntime,
    check_providers,
    check_gpu_libraries,
    check_jetson,
    check_cpu,
    check_microphone,
    check_memory_and_disk,
    check_bundles,
    check_network,
    check_https,
)
TOPICS = ("system", "packages", "onnxruntime", "gpu", "jetson", "cpu", "microphone", "memory and disk",
          "bundles", "network", "https", "doctor")  # fmt: skip


def choose_config(machine: Any) -> Tuple[str, str]:
    """The packaged config for this machine when none is given: (name, why)."""
    found = jetson(machine)
    if found is not None:
        return nvidia.jetson_config_for(found.model), f"chosen for this {found.model}"
    build = machine.onnxruntime()
    if not build.error and CUDA_EP in build.providers:
        driver = machine.nvidia_driver()
        if driver.found and driver.devices:
            return "pc-cuda", "chosen: an NVIDIA GPU and onnxruntime-gpu are here"
    return "pc-cpu", "chosen: no usable NVIDIA GPU here; --config NAME judges another"
