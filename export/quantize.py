"""Write one ONNX file at a precision: fp32 (as exported), int8 (dynamic, weights only), fp16.

Each file is converted on its own (sherpa-onnx does the same): the encoder and the decoder have different
weight/activation profiles, and a failure names the file it happened in.

* int8: ``onnxruntime.quantization.quantize_dynamic`` -- MatMul/Gemm weights stored as int8, activations
  quantised on the fly. The merged decoder keeps its layers inside the two branches of an If node, so
  ``EnableSubgraph`` must be on or the decoder would stay float (checked by ``count_ops`` in the tests).
* fp16: ``onnxruntime.transformers.float16.convert_float_to_float16`` (the onnxconverter-common code that ships
  inside onnxruntime). Inputs/outputs become float16 too: keeping them float32 (``keep_io_types``) produces an
  invalid merged decoder (see ``convert_decoder``), and on a GPU a float16 KV cache halves the memory traffic
  anyway. The runtime reads every input's dtype from its session, so it feeds either kind.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence

from resonance.errors import ResonanceError

log = logging.getLogger(__name__)

# Dynamic int8 for the CPU that will run the bundle: the choices Optimum's AutoQuantizationConfig presets make
# for *dynamic* quantisation. Weights are quantised per output channel (each row its own scale: more accurate
# than one scale per matrix, at no runtime cost). AVX2 without VNNI gets unsigned weights: its u8 x s8
# multiply-add (VPMADDUBSW) saturates int16 sums, which u8 x u8 avoids. For dynamic quantisation the AVX-512
# (with or without VNNI) and ARM64 presets are the same; the names follow the device (resonance/constants.py
# INT8_PRESETS, the bundle contract's names: these settings are keyed by them).
INT8_SETTINGS = {
    "avx2": {"weight_type": "QUInt8", "per_channel": True},
    "avx512": {"weight_type": "QInt8", "per_channel": True},
    "avx512-vnni": {"weight_type": "QInt8", "per_channel": True},
    "arm64": {"weight_type": "QInt8", "per_channel": True},  # Jetson
    "per-tensor": {"weight_type": "QInt8", "per_channel": False},  # one scale per matrix (Resonance <= 0.1)
}
DEFAULT_INT8_PRESET = "avx512"
INT8_OUTPUTS = ("int8", "fp32")  # the decoder's output projection in an int8 bundle

SINGLE_FILE_LIMIT = 2**31 - 1  # protobuf's 2 GB limit: a bigger model would need external data files


def convert_decoder(
    raw: Path,
    dst: Path,
    precision: str,
    int8_preset: str = DEFAULT_INT8_PRESET,
    int8_output: str = "int8",
) -> None:
    """Write the merged decoder at ``precision`` from Optimum's output folder ``raw``.

    ``int8_output``: "fp32" keeps the output projection (hidden state -> 51865 logits) in float32 in an int8
    bundle: +206 MB of peak RSS for whisper-base, for models whose logits are too close for int8 (the parity
    check says so).
    """
    if precision != "fp16":
        untied = raw / "decoder_model_merged.untied.onnx"
        model = _load(raw / "decoder_model_merged.onnx")
        projection = set(untie_output_projection(model))
        if precision == "fp32":  # the untied graph is the fp32 decoder: no second load and save
            save_single_file(model, dst)
            log.info("%s: fp32, %.1f MB", dst.name, dst.stat().st_size / 1e6)
            return
        if precision != "int8":
            raise ResonanceError(f"unknown precision {precision!r}", "use fp32, int8 or fp16")
        keep_float = sorted(
            {n.name for n in walk_nodes(model.graph) if n.op_type == "MatMul" and projection & set(n.input)}
        )
        save_single_file(model, untied)  # quantize_dynamic reads a file
        del model
        check_int8_output(int8_output)
        quantize_int8(untied, dst, int8_preset, keep_float if int8_output == "fp32" else [])
        log.info("%s: int8, output projection %s, %.1f MB", dst.name, int8_output, dst.stat().st_size / 1e6)
        return
    # float16's converter breaks an already merged graph (the If branches' outputs end up referring to the
    # outer graph), so convert the two decoders and merge them afterwards, as Optimum merges fp32 ones.
    # keep_io_types must be off for the merge (the inserted input casts collide between the branches):
    # inputs/outputs are float16 and the runtime reads each input's dtype from the session.
    from optimum.onnx import merge_decoders

    first = to_fp16_model(raw / "decoder_model.onnx", keep_io_types=False)
    with_past = to_fp16_model(raw / "decoder_with_past_model.onnx", keep_io_types=False)
    merged = raw / "decoder_model_merged.fp16.onnx"
    merge_decoders(first, with_past, save_path=str(merged), strict=False)
    model = _load(merged)
    untie_output_projection(model)
    save_single_file(model, dst)
    log.info("%s: fp16 (float16 inputs/outputs), %.1f MB", dst.name, dst.stat().st_size / 1e6)


def convert(src: Path, dst: Path, precision: str, int8_preset: str = DEFAULT_INT8_PRESET) -> None:
    """Write ``src`` to ``dst`` at ``precision`` ('fp32', 'int8' or 'fp16') as one self-contained file."""
    if precision == "fp32":
        save_single_file(_load(src), dst)
    elif precision == "int8":
        quantize_int8(src, dst, int8_preset)
    elif precision == "fp16":
        to_fp16(src, dst)
    else:
        raise ResonanceError(f"unknown precision {precision!r}", "use fp32, int8 or fp16")
    log.info("%s: %s, %.1f MB", dst.name, precision, dst.stat().st_size / 1e6)


def _load(path: Path):
    import onnx

    return onnx.load(str(path))  # also pulls in any external-data files Optimum wrote beside it


def save_single_file(model, dst: Path) -> None:
    """Save with the weights inside the .onnx (a bundle is exactly four files, easy to copy and hash)."""
    import onnx

    size = model.ByteSize()
    if size > SINGLE_FILE_LIMIT:
        raise ResonanceError(
            f"{dst.name} would be {size / 1e9:.1f} GB, over ONNX's 2 GB single-file limit",
            "export a smaller Whisper (base or small), or --quantize int8/fp16 to halve the weights",
        )
    onnx.save_model(model, str(dst), save_as_external_data=False)


def check_int8_preset(preset: str) -> None:
    if preset not in INT8_SETTINGS:
        raise ResonanceError(
            f"unknown int8 preset {preset!r}",
            f"use one of {', '.join(INT8_SETTINGS)} (the CPU of the device that runs the bundle)",
        )


def check_int8_output(value: str) -> None:
    if value not in INT8_OUTPUTS:
        raise ResonanceError(
            f"unknown int8 output projection {value!r}", f"use one of {', '.join(INT8_OUTPUTS)}"
        )


def quantize_int8(
    src: Path, dst: Path, preset: str = DEFAULT_INT8_PRESET, keep_float: Sequence[str] = ()
) -> None:
    """Dynamic int8 of every MatMul/Gemm weight of ``src``, except the nodes named in ``keep_float``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    check_int8_preset(preset)
    settings = INT8_SETTINGS[preset]
    with _quiet_root_logger():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=getattr(QuantType, settings["weight_type"]),
            per_channel=settings["per_channel"],
            nodes_to_exclude=list(keep_float),
            extra_options={"EnableSubgraph": True},
        )
    # quantize_dynamic writes one file for models under 2 GB; fold any external data back in if it did not.
    external = [p for p in dst.parent.iterdir() if p.name.startswith(dst.name) and p != dst]
    if external:
        save_single_file(_load(dst), dst)
        for path in external:
            path.unlink()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantiser logs through the root logger: a line per attention MatMul it skips ("non constant
    B", activations times activations, expected) and a pre-processing tip. Keep the CLI output readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def to_fp16(src: Path, dst: Path) -> None:
    # Float16 inputs/outputs like the decoder's: the encoder's output feeds the decoder without a cast.
    save_single_file(to_fp16_model(src, keep_io_types=False), dst)


def to_fp16_model(src: Path, keep_io_types: bool):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(_load(src), keep_io_types=keep_io_types)


def untie_output_projection(model) -> List[str]:
    """Store the transposed vocabulary matrix once instead of transposing it in each branch; returns the names.

    Whisper ties its output projection to the token embedding, and Optimum's merged decoder computes
    ``Transpose(embed_tokens)`` inside *both* If branches. onnxruntime folds each into its own constant, so
    the 26M-parameter matrix sat in memory three times (measured: decoder session 553 MB of RSS for a 133 MB
    int8 file). As one outer initializer it is stored once, and it is a constant MatMul weight, so int8 export
    quantises the output projection too: peak RSS 659 -> 352 MB, p50 112 -> 95 ms, CER +0.7 points on
    speaker A (README, Speed). The fp32 file grows by the matrix (106 MB for whisper-base); its RAM shrinks.
    """
    from onnx import numpy_helper

    outer = model.graph
    initializers = {init.name: init for init in outer.initializer}
    transposed: Dict[str, Any] = {}

    def visit(graph) -> None:
        kept = []
        for node in graph.node:
            perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
            folds = node.op_type == "Transpose" and node.input[0] in initializers and perm in ([[1, 0]], [])
            if folds and graph is not outer:
                name = node.output[0]
                if name not in transposed:
                    matrix = numpy_helper.to_array(initializers[node.input[0]])
                    transposed[name] = numpy_helper.from_array(matrix.T.copy(), name)
                continue
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    visit(attr.g)
            kept.append(node)
        del graph.node[:]
        graph.node.extend(kept)

    visit(outer)
    outer.initializer.extend(transposed.values())
    return sorted(transposed)


def walk_nodes(graph) -> Iterator:
    """Every node of ``graph`` and of its subgraphs (If/Loop bodies), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from walk_nodes(attr.g)
            for sub in attr.graphs:
                yield from walk_nodes(sub)


def count_ops(path: Path) -> Counter:
    """Op types in a model file, subgraphs included."""
    return Counter(node.op_type for node in walk_nodes(_load(path).graph))
