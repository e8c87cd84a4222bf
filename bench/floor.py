"""The physical floor: how fast a clip *could* be transcribed on this CPU, from the model's work and bytes.

Two numbers are measured on the machine, with onnxruntime and the bench's thread count (what every engine
gets): the achievable GEMM rate (a large fp32 MatMul; a large int8 MatMulInteger, the kernel dynamic int8
uses) and the memory bandwidth (a large element-wise Add: one read and one write of every byte). The model's
work comes from its config (whisper-base at a 5 s window: ~10.7 GFLOP in the encoder); each decoder step
reads every decoder weight once (its KV cache is small next to them), so a step costs at least its bytes over
the bandwidth, or its FLOPs over the GEMM rate, whichever is more. The floor of a clip:

    encoder FLOPs / GEMM rate + cross-attention K/V (once) / GEMM rate + steps x max(bytes / bandwidth,
    FLOPs / GEMM rate)

It ignores the log-mel, attention softmax, LayerNorm and everything but the matrix products, so real
engines stay above it; "x floor" says by how much. Torch-free (onnxruntime + numpy).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Mapping

import numpy as np

POSITIONS_PER_SECOND = 50  # encoder positions per second of audio (resonance/train/window.py)
FRAMES_PER_POSITION = 2  # the encoder's second convolution has stride 2
BYTES = {"fp32": 4, "fp16": 2, "int8": 1}  # per weight


ARCHITECTURE_KEYS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "num_mel_bins",
    "vocab_size",
)


def window_seconds(label: str) -> float:
    """The seconds of a window label ("5 s", "30 s dynamic": config.window_label's form)."""
    return float(label.split()[0])


def row_floor(architecture: Mapping[str, Any], row: Mapping[str, Any], peaks: Mapping[str, float]) -> float:
    """The floor of a table row: its window and precision, the mean decoder steps it took per clip (its
    text tokens plus the step that produced the end of text)."""
    work = model_work(architecture, window_seconds(row["window"]))
    return floor_ms(work, row["precision"], row["tokens_per_clip"] + 1, peaks)


def model_work(config: Mapping[str, Any], window_seconds: float) -> Dict[str, float]:
    """FLOPs of one encoder pass and of the cross-attention K/V (once per clip), and the weights one decoder
    step multiplies (each weight: 2 FLOPs, and read once), for a Hugging Face Whisper config."""
    d = config["d_model"]
    positions = round(window_seconds * POSITIONS_PER_SECOND)
    frames = positions * FRAMES_PER_POSITION
    enc_ffn, dec_ffn = config["encoder_ffn_dim"], config["decoder_ffn_dim"]
    conv = 2 * (frames * d * config["num_mel_bins"] * 3 + positions * d * d * 3)  # kernel 3, stride 1 then 2
    # per encoder layer: Q, K, V, O projections, the FFN, and the attention's two T x T x d products
    layer = 2 * positions * (4 * d * d + 2 * d * enc_ffn) + 2 * 2 * positions * positions * d
    cross_kv = config["decoder_layers"] * 2 * (2 * positions * d * d)
    # per decoder step: self-attention Q, K, V, O; cross-attention Q, O; the FFN; then the vocabulary projection
    step_weights = config["decoder_layers"] * (6 * d * d + 2 * d * dec_ffn) + config["vocab_size"] * d
    return {
        "encoder_flops": float(conv + config["encoder_layers"] * layer),
        "cross_kv_flops": float(cross_kv),
        "step_weights": float(step_weights),
    }


def floor_ms(
    work: Mapping[str, float], precision: str, decoder_steps: float, peaks: Mapping[str, float]
) -> float:
    """The least time a clip can take: ``work`` (model_work) on the measured ``peaks`` (measure_peaks)."""
    rate = peaks["gemm_int8_gops" if precision == "int8" else "gemm_fp32_gflops"] * 1e9
    step_flops = 2 * work["step_weights"]
    step_bytes = work["step_weights"] * BYTES.get(precision, 4)
    step_s = max(step_bytes / (peaks["bandwidth_gbs"] * 1e9), step_flops / rate)
    once_s = (work["encoder_flops"] + work["cross_kv_flops"]) / rate
    return 1000.0 * (once_s + decoder_steps * step_s)


def measure_peaks(threads: int, repeats: int = 5) -> Dict[str, float]:
    """This machine's achievable fp32 GFLOP/s, int8 GOP/s and memory GB/s on ``threads`` threads (best of
    ``repeats``: the least disturbed run is the closest to what the hardware can do)."""
    n = 2048  # 17 GFLOP per fp32 product: long enough to time, past every cache
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    fp32_s = _best(_session(_matmul("MatMul", np.float32), threads), {"a": a, "b": a}, repeats)
    qa = np.random.default_rng(1).integers(0, 255, (n, n), dtype=np.uint8)
    qb = np.random.default_rng(2).integers(-127, 127, (n, n), dtype=np.int8)
    int8_s = _best(_session(_matmul("MatMulInteger", None), threads), {"a": qa, "b": qb}, repeats)
    big = np.ones(64 * 1024 * 1024, dtype=np.float32)  # 256 MB, 8x a large L3
    copy_s = _best(_session(_add(), threads), {"a": big, "b": np.float32(1.0).reshape(1)}, repeats)
    return {
        "gemm_fp32_gflops": round(2 * n**3 / fp32_s / 1e9, 1),
        "gemm_int8_gops": round(2 * n**3 / int8_s / 1e9, 1),
        "bandwidth_gbs": round(2 * big.nbytes / copy_s / 1e9, 1),  # read a, write the sum
        "threads": threads,
    }


def _best(session, feeds: Dict[str, np.ndarray], repeats: int) -> float:
    session.run(None, feeds)  # first run plans and allocates
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return min(times)


def _session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _matmul(op: str, dtype):
    from onnx import TensorProto, helper

    if op == "MatMul":
        inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", "n"]) for x in "ab"]
        out_type = TensorProto.FLOAT
    else:  # u8 x s8 -> s32: the activations x weights product of dynamic int8
        inputs = [
            helper.make_tensor_value_info("a", TensorProto.UINT8, ["n", "n"]),
            helper.make_tensor_value_info("b", TensorProto.INT8, ["n", "n"]),
        ]
        out_type = TensorProto.INT32
    output = helper.make_tensor_value_info("y", out_type, ["n", "n"])
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], op, inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _add():
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
