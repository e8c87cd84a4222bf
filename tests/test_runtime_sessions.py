"""onnxruntime sessions: provider fallback with one clear warning, thread/optimisation settings."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from resonance.errors import ResonanceError
from resonance.runtime import sessions
from resonance.runtime.sessions import create_session, resolve_providers, session_options

ort = pytest.importorskip("onnxruntime")
CUDA = "CUDAExecutionProvider"


@pytest.fixture
def bundle(tiny_bundle) -> Path:
    return tiny_bundle  # conftest's session-wide tiny fp32 bundle (read-only)


@pytest.fixture
def cpu_only_build(monkeypatch):
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA: the fallback cannot be observed")
    monkeypatch.setattr(sessions, "_WARNED", set())  # each test sees the process's first fallback


def _warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_missing_providers_fall_back_to_cpu_with_one_warning(cpu_only_build, caplog):
    with caplog.at_level(logging.WARNING, logger="resonance.runtime.sessions"):
        chosen = resolve_providers(["TensorrtExecutionProvider", CUDA, "CPUExecutionProvider"])
        resolve_providers(["TensorrtExecutionProvider", CUDA, "CPUExecutionProvider"])  # a second session
    assert chosen == ["CPUExecutionProvider"]
    [line] = _warnings(caplog)  # one line for both providers, and not again for the next session
    assert line.startswith("Tensorrt, CUDA not available in this onnxruntime build")
    assert "onnxruntime-gpu" in line and "TensorRT" in line  # says how to get each
    assert line.endswith("falling back to CPU")


def test_transcriber_reports_the_providers_in_use(cpu_only_build, bundle, caplog):
    from resonance.runtime.transcriber import Transcriber

    with caplog.at_level(logging.WARNING):
        transcriber = Transcriber(bundle, providers=(CUDA,))  # an encoder and a decoder session
        Transcriber(bundle, providers=(CUDA,))  # a second patient's bundle
    assert transcriber.providers == ["CPUExecutionProvider"]
    assert _warnings(caplog) == [caplog.records[0].getMessage()]
    assert _warnings(caplog)[0].startswith("CUDA not available")
    assert not transcriber.on_gpu


def test_a_provider_that_fails_to_start_is_one_warning(cpu_only_build, bundle, monkeypatch, caplog):
    # onnxruntime-gpu on a PC without the CUDA libraries lists CUDA but cannot start it. A CPU build given CUDA
    # anyway behaves the same way (it drops the provider at session creation), so no GPU is needed here.
    monkeypatch.setattr(sessions, "resolve_providers", lambda requested: list(requested))
    with caplog.at_level(logging.WARNING, logger="resonance.runtime.sessions"):
        for name in ("encoder.onnx", "decoder.onnx"):
            session = create_session(bundle / name, providers=[CUDA, "CPUExecutionProvider"])
            assert session.get_providers() == ["CPUExecutionProvider"]
    [line] = _warnings(caplog)
    assert line.startswith("CUDA is installed but could not be initialised") and line.endswith(
        "running on CPU"
    )


def test_cpu_is_always_the_last_resort():
    assert resolve_providers([]) == ["CPUExecutionProvider"]
    options = {"arena_extend_strategy": "kSameAsRequested"}
    assert resolve_providers([("CPUExecutionProvider", options)]) == [("CPUExecutionProvider", options)]


def test_both_wheels_installed_gets_the_conflict_fix(monkeypatch):
    monkeypatch.setattr(sessions, "_installed_distributions", lambda: ["onnxruntime", "onnxruntime-gpu"])
    message = sessions.unavailable_message([CUDA])
    assert "both onnxruntime and onnxruntime-gpu are installed" in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in message


def test_threads_and_optimisation_level(bundle):
    options = session_options(threads=1, optimization="basic")
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = create_session(bundle / "encoder.onnx", threads=1, optimization="disable")
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ResonanceError, match="optimisation level"):
        session_options(optimization="max")


def test_worker_threads_sleep_unless_spin_wait_is_asked_for(bundle):
    """onnxruntime's workers busy-wait by default; the runtime's sessions do not (they slowed each other and
    the rest of the machine: runtime/sessions.py session_options)."""
    from resonance.runtime.transcriber import Transcriber

    spinning = "session.intra_op.allow_spinning"
    assert session_options(threads=2).get_session_config_entry(spinning) == "0"
    assert session_options(threads=2, spin_wait=True).get_session_config_entry(spinning) == "1"
    for spin_wait, expected in ((False, "0"), (True, "1")):
        transcriber = Transcriber(bundle, threads=1, spin_wait=spin_wait)
        for session in (transcriber.encoder, transcriber.decoder):
            assert session.get_session_options().get_session_config_entry(spinning) == expected


def test_unloadable_model_is_a_resonance_error(tmp_path):
    bad = tmp_path / "encoder.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ResonanceError, match="could not load"):
        create_session(bad)


def test_iobinding_step_runner_gives_the_same_text_with_outputs_bound_on_the_host(bundle):
    """The CUDA decoder loop (IOBinding: OrtValues carried from step to step, logits alone to the host) run
    with every output bound to the CPU: the binding logic is checked here; only the device differs on a GPU."""
    from resonance.runtime.decoding import DecodingOptions
    from resonance.runtime.merged_decoder import IOBindingStepRunner
    from resonance.runtime.transcriber import Transcriber

    t = np.arange(24000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    plain = Transcriber(bundle)
    bound = Transcriber(bundle)
    runners = []

    def host_bound_runner():
        runners.append(IOBindingStepRunner(bound.decoder, "cpu", 0))
        return runners[-1]

    bound.step_runner = host_bound_runner
    for options in (DecodingOptions(repetition_count=0), DecodingOptions(beam_size=3, max_new_tokens=8)):
        assert (
            bound.transcribe(audio, options=options).tokens == plain.transcribe(audio, options=options).tokens
        )
    assert runners  # the bound path really ran
    phrases = ["我想喝水", "帮我开灯", "我饿了"]
    expected = plain.transcribe(audio, mode="phrases", phrases=phrases).phrases
    assert bound.transcribe(audio, mode="phrases", phrases=phrases).phrases == expected


@pytest.mark.gpu
def test_cuda_iobinding_matches_cpu(bundle, tmp_path):
    """On a GPU the decoder loop keeps the KV cache on the device (IOBinding); text must not change."""
    from resonance.runtime.decoding import DecodingOptions
    from resonance.runtime.transcriber import Transcriber

    if CUDA not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    gpu = Transcriber(copy, providers=(CUDA, "CPUExecutionProvider"))
    cpu = Transcriber(copy)
    assert gpu.providers[0] == CUDA and gpu.on_gpu
    t = np.arange(32000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    options = DecodingOptions(repetition_count=0)
    assert gpu.transcribe(audio, options=options).tokens == cpu.transcribe(audio, options=options).tokens
