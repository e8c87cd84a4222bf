"""Export: a tiny random Whisper (+ a LoRA adapter) -> bundle; parity; quantisation; atomic writes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import DEMO_DATA, random_lora_adapter, tone

from resonance.errors import ResonanceError
from resonance.runtime.bundle import MANIFEST, Manifest, load_manifest, sha256_file

pytest.importorskip("optimum.exporters.onnx")
ort = pytest.importorskip("onnxruntime")

from resonance.export.onnx_export import export_bundle  # noqa: E402
from resonance.export.parity import ParityError, Row, judge, load_clips  # noqa: E402
from resonance.export.quantize import count_ops, walk_nodes  # noqa: E402
from resonance.runtime.transcriber import Transcriber  # noqa: E402

BUNDLE_FILES = ["decoder.onnx", "encoder.onnx", "manifest.json", "tokenizer.json"]


@pytest.fixture(scope="module")
def base_bundle(tiny_whisper, tmp_path_factory) -> Path:
    return export_bundle(str(tiny_whisper), tmp_path_factory.mktemp("bundles") / "base", patient="grandpa")


@pytest.fixture(scope="module")
def adapter(tiny_whisper, tmp_path_factory) -> Path:
    """A LoRA adapter like `resonance train` saves, with non-zero B so merging changes the model."""
    out = random_lora_adapter(tiny_whisper, tmp_path_factory.mktemp("adapter"), seed=1)
    report = {
        "cer_before": 0.8,
        "cer_after": 0.2,
        "train_texts": ["我想喝水", "我饿了", "我想喝水"],
        "utterances": [{"rel": "audio/1.wav", "cer": 0.0}],
    }
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")
    return out


def first_step_logits(bundle: Path, features: np.ndarray) -> np.ndarray:
    """Logits of the decoder's first step on the SOT sequence, straight from the two ONNX sessions."""
    manifest = load_manifest(bundle)
    encoder = ort.InferenceSession(str(bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(bundle / "decoder.onnx"), providers=["CPUExecutionProvider"])
    enc_in = encoder.get_inputs()[0]
    dtype = np.float16 if "float16" in enc_in.type else np.float32
    hidden = encoder.run(None, {enc_in.name: features.astype(dtype)})[0]
    feeds = {"input_ids": np.asarray([manifest.tokens.sot_sequence]), "encoder_hidden_states": hidden}
    feeds["use_cache_branch"] = np.asarray([False])
    for arg in decoder.get_inputs():
        if arg.name.startswith("past_key_values."):
            feeds[arg.name] = np.zeros((1, arg.shape[1], 0, arg.shape[3]), dtype=dtype)
    return decoder.run(["logits"], feeds)[0].astype(np.float32)


def torch_logits(model, bundle: Path, features: np.ndarray) -> np.ndarray:
    import torch

    ids = torch.tensor([load_manifest(bundle).tokens.sot_sequence])
    with torch.no_grad():
        return model(input_features=torch.from_numpy(features), decoder_input_ids=ids).logits.numpy()


def features_for(bundle: Path) -> np.ndarray:
    from resonance.runtime.features import log_mel_spectrogram

    window = load_manifest(bundle).audio.window_seconds
    return log_mel_spectrogram(tone(2.0, freq=330), window_seconds=window)[np.newaxis]


# ------------------------------------------------------------------------------------------------------
# fp32 bundle


def test_bundle_is_exactly_four_files_with_a_complete_manifest(base_bundle, tiny_whisper):
    assert sorted(p.name for p in base_bundle.iterdir()) == BUNDLE_FILES
    data = json.loads((base_bundle / MANIFEST).read_text(encoding="utf-8"))
    assert set(data) == set(Manifest.__dataclass_fields__)
    manifest = load_manifest(base_bundle, verify=True)
    for role, name in (
        ("encoder", "encoder.onnx"),
        ("decoder", "decoder.onnx"),
        ("tokenizer", "tokenizer.json"),
    ):
        entry = manifest.files[role]
        assert entry["path"] == name
        assert entry["sha256"] == sha256_file(base_bundle / name)
        assert entry["bytes"] == (base_bundle / name).stat().st_size
    assert (base_bundle / "tokenizer.json").read_bytes() == (tiny_whisper / "tokenizer.json").read_bytes()
    assert (manifest.patient, manifest.precision, manifest.language, manifest.task) == (
        "grandpa",
        "fp32",
        "zh",
        "transcribe",
    )
    assert manifest.base_model == str(tiny_whisper) and manifest.adapter is None
    assert manifest.metrics == {} and manifest.phrases == []
    assert manifest.created.endswith("Z") and manifest.resonance_version


def test_manifest_tokens_and_shapes_come_from_the_model(base_bundle, tiny_whisper):
    config = json.loads((tiny_whisper / "config.json").read_text())
    generation = json.loads((tiny_whisper / "generation_config.json").read_text())
    manifest = load_manifest(base_bundle)
    tokens = manifest.tokens
    assert (tokens.sot, tokens.eot, tokens.language, tokens.transcribe) == (50258, 50257, 50260, 50359)
    assert (tokens.no_timestamps, tokens.no_speech, tokens.translate) == (50363, 50362, 50358)
    assert tokens.sot_sequence == [50258, 50260, 50359, 50363]  # <|startoftranscript|><|zh|><|transcribe|>…
    assert tokens.suppress == generation["suppress_tokens"]
    assert tokens.begin_suppress == [220, 50257]
    assert manifest.audio.window_seconds == 30.0 and manifest.audio.dynamic_window is False
    assert manifest.audio.n_mels == config["num_mel_bins"]
    assert manifest.model.d_model == config["d_model"]
    assert manifest.model.decoder_layers == config["decoder_layers"]
    assert manifest.model.vocab_size == config["vocab_size"]


def test_decoder_is_the_merged_kv_cache_graph(base_bundle):
    decoder = ort.InferenceSession(str(base_bundle / "decoder.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in decoder.get_inputs()]
    assert "use_cache_branch" in names
    layers = load_manifest(base_bundle).model.decoder_layers
    assert sum(n.startswith("past_key_values.") for n in names) == 4 * layers  # self + cross, key + value
    assert count_ops(base_bundle / "decoder.onnx")["If"] == 1
    # One copy of the weights for both branches. The tied vocabulary matrix is stored as the embedding and,
    # transposed, as the output projection, both in the outer graph: no branch transposes a weight itself
    # (onnxruntime would fold one more copy per branch into memory).
    import onnx

    vocab = load_manifest(base_bundle).model.vocab_size
    graph = onnx.load(str(base_bundle / "decoder.onnx")).graph
    weights = {t.name for t in graph.initializer}
    assert sum(vocab in t.dims for t in graph.initializer) == 2
    assert not [n.name for n in walk_nodes(graph) if n.op_type == "Transpose" and n.input[0] in weights]


def test_parity_passed_with_identical_tokens(base_bundle):
    parity = load_manifest(base_bundle).parity
    assert parity["passed"] is True and parity["precision"] == "fp32"
    assert parity["source"] == "synthetic"
    assert parity["tokens_identical"] == parity["clips"] == 3
    assert parity["cer"] == 0.0 and parity["criterion"] == "identical tokens"


def test_bundle_is_readable_by_others(base_bundle):
    assert base_bundle.stat().st_mode & 0o055  # not the 0700 of a temp folder
    assert (base_bundle / MANIFEST).stat().st_mode & 0o044


# ------------------------------------------------------------------------------------------------------
# adapter


def test_adapter_is_merged_into_the_export(adapter, base_bundle, tiny_whisper, tmp_path):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    out = export_bundle(None, tmp_path / "adapted", adapter=adapter, parity_clips=[DEMO_DATA / "take2"])
    manifest = load_manifest(out)
    assert manifest.base_model == str(tiny_whisper)  # taken from the adapter's train_config.json
    assert manifest.adapter == str(adapter)
    assert manifest.metrics == {"cer_before": 0.8, "cer_after": 0.2}  # scalars only, no per-clip lists
    assert manifest.phrases == ["我想喝水", "我饿了"]
    assert manifest.parity["tokens_identical"] == manifest.parity["clips"] == 8
    assert "labelled clips" in manifest.parity["source"]
    assert "cer_labels_runtime" in manifest.parity

    features = features_for(out)
    adapted = first_step_logits(out, features)
    merged = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(tiny_whisper), adapter)
    expected = torch_logits(merged.merge_and_unload().eval(), out, features)
    base = first_step_logits(base_bundle, features)
    assert np.abs(adapted - expected).max() < 1e-3
    assert np.abs(adapted - base).max() > 100 * np.abs(adapted - expected).max()


def test_adapter_window_is_applied_before_export(adapter, tmp_path):
    windowed = tmp_path / "adapter-5s"
    shutil.copytree(adapter, windowed)
    config = json.loads((windowed / "train_config.json").read_text())
    (windowed / "train_config.json").write_text(json.dumps({**config, "window_seconds": 5.0}))
    manifest = load_manifest(export_bundle(None, tmp_path / "b", adapter=windowed))
    assert manifest.audio.window_seconds == 5.0
    assert manifest.model.max_source_positions == 250
    assert manifest.parity["tokens_identical"] == manifest.parity["clips"]


def test_not_an_adapter_folder(tiny_whisper, tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ResonanceError, match="not an adapter folder"):
        export_bundle(str(tiny_whisper), tmp_path / "b", adapter=tmp_path / "x")


def test_a_bundle_or_a_missing_folder_where_an_adapter_is_expected(base_bundle, tmp_path):
    with pytest.raises(ResonanceError, match=r"is a bundle .*, not an adapter") as info:
        export_bundle(None, tmp_path / "b", adapter=base_bundle)
    assert "--adapter adapters/grandpa" in info.value.hint
    with pytest.raises(ResonanceError, match=r"adapter folder '.*nope' does not exist"):
        export_bundle(None, tmp_path / "b", adapter=tmp_path / "nope")


def test_a_damaged_train_config_is_one_error(adapter, tmp_path):
    damaged = tmp_path / "adapter"
    shutil.copytree(adapter, damaged)
    (damaged / "train_config.json").write_text("[" * 100000, encoding="utf-8")
    with pytest.raises(ResonanceError, match=r"train_config\.json is nested too deeply"):
        export_bundle(None, tmp_path / "b", adapter=damaged)


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_onto_its_adapter_with_force_keeps_the_adapter(adapter, tmp_path, run_cli):
    """The issue's case: `export --adapter X --out X --force` deleted the adapter. Refused before any work."""
    mine = tmp_path / "grandpa"
    shutil.copytree(adapter, mine)
    before = tree(mine)
    proc = run_cli("export", "--adapter", mine, "--out", mine, "--force")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"the bundle folder '{mine}' is the adapter folder" in proc.stderr
    for out in (mine / "bundle", tmp_path):  # inside it, or around it
        with pytest.raises(ResonanceError, match="adapter folder"):
            export_bundle(None, out, adapter=mine, force=True)
    assert tree(mine) == before


def test_force_replaces_a_bundle_but_never_another_folder(adapter, tmp_path):
    users = tmp_path / "documents"
    users.mkdir()
    (users / "letter.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ResonanceError, match=r"is not a bundle made by resonance .*manifest\.json"):
        export_bundle(None, users, adapter=adapter, force=True)
    assert tree(users) == {"letter.txt": b"keep me"}


# ------------------------------------------------------------------------------------------------------
# dynamic audio window


def test_dynamic_window_encoder(base_bundle, tiny_whisper, tmp_path):
    from resonance.runtime.transcriber import Transcriber

    out = export_bundle(str(tiny_whisper), tmp_path / "dyn", dynamic_window=True)
    manifest = load_manifest(out)
    assert manifest.audio.dynamic_window is True
    assert manifest.parity["tokens_identical"] == manifest.parity["clips"]  # PyTorch sliced the same way
    dynamic = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    fixed = ort.InferenceSession(str(base_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    full = features_for(base_bundle)  # 3000 frames
    # The full window: exactly the fixed encoder.
    np.testing.assert_allclose(
        dynamic.run(None, {"input_features": full})[0],
        fixed.run(None, {"input_features": full})[0],
        atol=1e-5,
    )
    # 2 s of audio as 200 frames: 100 positions, and (as designed) not the padded window's first 100.
    short = dynamic.run(None, {"input_features": np.ascontiguousarray(full[:, :, :200])})[0]
    assert short.shape[1] == 100
    padded = fixed.run(None, {"input_features": full})[0][:, :100]
    assert np.abs(short - padded).max() > 1e-3
    transcriber = Transcriber(out)
    assert transcriber.features(tone(1.5)).shape[-1] == 200  # 150 frames rounded up to a 1 s bucket
    assert transcriber.features(tone(40.0)).shape[-1] == 3000  # never more than the window
    assert transcriber.transcribe(tone(1.5)).tokens


# ------------------------------------------------------------------------------------------------------
# quantisation


def _if_branch_ops(path: Path) -> set:
    import onnx

    graph = onnx.load(str(path)).graph
    branch_ops = set()
    for node in graph.node:
        if node.op_type == "If":
            for attr in node.attribute:
                branch_ops |= {n.op_type for n in walk_nodes(attr.g)}
    return branch_ops


@pytest.mark.parametrize("quantize", ["int8", "fp16"])
def test_quantized_export(quantize, base_bundle, tiny_whisper, tmp_path):
    out = tmp_path / "q"
    shutil.copytree(base_bundle, out)  # --force replaces an existing bundle
    # A random model's greedy path is fragile: the CER gate is exercised by test_judge_*; here any CER passes.
    export_bundle(str(tiny_whisper), out, quantize=quantize, force=True, parity_tolerance=1.0)
    manifest = load_manifest(out)
    assert manifest.precision == quantize
    assert manifest.parity["precision"] == quantize
    assert manifest.parity["criterion"] == "CER between PyTorch and runtime"
    assert 0.0 <= manifest.parity["cer"] <= 1.0
    assert sorted(p.name for p in out.iterdir()) == BUNDLE_FILES
    if quantize == "int8":
        assert "MatMulInteger" in _if_branch_ops(
            out / "decoder.onnx"
        )  # the decoder's layers, not just the encoder
        assert count_ops(out / "encoder.onnx")["MatMulInteger"] > 0
        import onnx

        from resonance.cpu import host_int8_preset
        from resonance.export.quantize import INT8_SETTINGS

        preset = manifest.quantization["int8_preset"]
        assert preset == host_int8_preset()  # no --int8-preset: made for the CPU it was exported on
        weights = {"QInt8": onnx.TensorProto.INT8, "QUInt8": onnx.TensorProto.UINT8}
        vocab = load_manifest(out).model.vocab_size  # the output projection is quantised too
        decoder = onnx.load(str(out / "decoder.onnx")).graph
        expected = weights[INT8_SETTINGS[preset]["weight_type"]]
        assert any(vocab in t.dims and t.data_type == expected for t in decoder.initializer)
        assert (out / "encoder.onnx").stat().st_size < 0.85 * (base_bundle / "encoder.onnx").stat().st_size
    else:
        session = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
        assert {i.name: i.type for i in session.get_inputs()}["encoder_hidden_states"] == "tensor(float16)"
        assert (out / "decoder.onnx").stat().st_size < 0.6 * (base_bundle / "decoder.onnx").stat().st_size
    features = features_for(out)
    quantized, full = first_step_logits(out, features), first_step_logits(base_bundle, features)
    assert np.corrcoef(quantized.ravel(), full.ravel())[0, 1] > 0.99
    from resonance.runtime.transcriber import Transcriber

    assert Transcriber(out).transcribe(tone(1.0)).tokens  # the runtime runs it


def _int8_weights(path):
    """(dtype, number of scales) of each weight quantised at export: initializers ending in _quantized."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    for node in walk_nodes(graph):
        for sub in (a.g for a in node.attribute if a.g is not None):
            inits.update({i.name: i for i in sub.initializer})
    return {
        name: (
            numpy_helper.to_array(init).dtype,
            numpy_helper.to_array(inits[name[: -len("_quantized")] + "_scale"]).size,
        )
        for name, init in inits.items()
        if name.endswith("_quantized") and name[: -len("_quantized")] + "_scale" in inits
    }


def test_int8_preset_for_avx2_writes_unsigned_per_channel_weights(base_bundle, tiny_whisper, tmp_path):
    out = tmp_path / "avx2"
    export_bundle(str(tiny_whisper), out, quantize="int8", int8_preset="avx2", parity_tolerance=1.0)
    manifest = load_manifest(out)
    assert manifest.quantization == {
        "int8_preset": "avx2",
        "weight_type": "QUInt8",
        "per_channel": True,
        "output_projection": "int8",
    }
    weights = _int8_weights(out / "encoder.onnx")
    assert weights and {dtype for dtype, _ in weights.values()} == {np.dtype("uint8")}
    assert all(scales > 1 for _, scales in weights.values())  # one scale per output channel
    assert Transcriber(out).transcribe(tone(1.0)).tokens


def test_int8_preset_needs_int8_and_a_known_name(tiny_whisper, tmp_path):
    with pytest.raises(ResonanceError, match="--quantize int8"):
        export_bundle(str(tiny_whisper), tmp_path / "a", int8_preset="arm64")
    with pytest.raises(ResonanceError, match="avx2"):
        export_bundle(str(tiny_whisper), tmp_path / "b", quantize="int8", int8_preset="avx3")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------------
# atomic writes and failures


def test_refuses_to_overwrite_without_force(base_bundle, tiny_whisper):
    before = (base_bundle / MANIFEST).read_bytes()
    with pytest.raises(ResonanceError, match="already exists"):
        export_bundle(str(tiny_whisper), base_bundle)
    assert (base_bundle / MANIFEST).read_bytes() == before


def _corrupting(monkeypatch):
    """Make the export write a decoder whose token embedding is negated (a silent exporter bug)."""
    import onnx

    from resonance.export import onnx_export

    real = onnx_export.write_onnx_files

    def corrupt(raw, bundle, *settings):
        precision = real(raw, bundle, *settings)
        model = onnx.load(str(bundle / "decoder.onnx"))
        biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # the tied embedding
        array = onnx.numpy_helper.to_array(biggest)
        biggest.CopyFrom(onnx.numpy_helper.from_array(-array, biggest.name))
        onnx.save(model, str(bundle / "decoder.onnx"))
        return precision

    monkeypatch.setattr(onnx_export, "write_onnx_files", corrupt)


def test_failed_parity_leaves_no_bundle(monkeypatch, tiny_whisper, tmp_path):
    _corrupting(monkeypatch)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_bundle(str(tiny_whisper), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary folder


def test_failed_parity_keeps_the_old_bundle(monkeypatch, base_bundle, tiny_whisper, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(base_bundle, old)
    _corrupting(monkeypatch)
    with pytest.raises(ParityError):
        export_bundle(str(tiny_whisper), old, force=True)
    assert load_manifest(old, verify=True).parity["passed"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_bad_arguments_fail_before_any_work(tiny_whisper, tmp_path):
    with pytest.raises(ResonanceError, match="tolerance"):
        export_bundle(str(tiny_whisper), tmp_path / "b", parity_tolerance=1.5)
    with pytest.raises(ResonanceError, match="quantize"):
        export_bundle(str(tiny_whisper), tmp_path / "b", quantize="int4")
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------------
# the parity judgement


def _decode(ids):
    return "".join(chr(0x4E00 + i) for i in ids)


def test_judge_fp32_needs_identical_tokens():
    rows = [Row([1, 2, 3], [1, 2, 3]), Row([4, 5, 6], [4, 5, 7])]
    with pytest.raises(ParityError, match="clip 2/2 at token 2"):
        judge(rows, "fp32", 0.1, "test", _decode, 48)
    named = [rows[0], Row([4, 5, 6], [4, 5, 7], None, "a/clip.flac")]
    with pytest.raises(ParityError, match=r"clip 2/2 \(a/clip\.flac\) at token 2"):
        judge(named, "fp32", 0.1, "test", _decode, 48)
    report = judge(rows[:1], "fp32", 0.1, "test", _decode, 48)
    assert report["passed"] and report["tokens_identical"] == 1


def test_judge_quantized_uses_the_cer_between_transcripts():
    rows = [Row([1, 2, 3, 4, 5], [1, 2, 3, 4, 9])]  # 1 of 5 characters differs: CER 0.2
    assert judge(rows, "int8", 0.25, "test", _decode, 48)["cer"] == pytest.approx(0.2)
    with pytest.raises(ParityError, match=r"CER 0\.200 > tolerance 0\.100"):
        judge(rows, "int8", 0.10, "test", _decode, 48)


@pytest.mark.parametrize(
    "preset, output, suggested, not_suggested",
    [
        ("avx2", "int8", ["--int8-output fp32", "--int8-preset per-tensor"], []),
        ("per-tensor", "int8", ["--int8-output fp32"], ["--int8-preset"]),
        ("avx2", "fp32", ["--int8-preset per-tensor"], ["--int8-output"]),
        ("per-tensor", "fp32", ["--quantize none"], ["--int8-output", "--int8-preset", "try"]),
    ],
)
def test_int8_advice_names_only_the_options_not_already_used(preset, output, suggested, not_suggested):
    rows = [Row([1, 2, 3, 4, 5], [1, 2, 3, 4, 9])]  # CER 0.2
    quantization = {"int8_preset": preset, "output_projection": output}
    with pytest.raises(ParityError) as failed:
        judge(rows, "int8", 0.10, "test", _decode, 48, quantization)
    assert all(option in failed.value.hint for option in suggested)
    assert not any(option in failed.value.hint for option in not_suggested)


def test_parity_leaves_out_clips_without_audio_and_says_so(tmp_path, caplog):
    empty, short, clip = tmp_path / "empty.wav", tmp_path / "tiny.wav", tmp_path / "clip.flac"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    sf.write(short, tone(0.05), 16000)
    sf.write(clip, tone(1.0), 16000)
    with caplog.at_level("WARNING"):
        clips, source = load_clips([empty, short, clip])
    assert [c.name for c in clips] == [str(clip)] and source.startswith("1 of 3 clips")
    assert f"leaving out {empty}" in caplog.text and f"leaving out {short}" in caplog.text
    with pytest.raises(ResonanceError, match=r"no parity clip has 0\.1 s of audio"):
        load_clips([empty])


def test_judge_quantized_on_labelled_clips_uses_the_accuracy_loss():
    label = _decode([1, 2, 3, 4, 5])
    # PyTorch gets 2 of 5 wrong, the runtime 2 other ones: they disagree a lot but are equally accurate.
    rows = [Row([1, 2, 3, 8, 9], [6, 7, 3, 4, 5], label)]
    report = judge(rows, "int8", 0.10, "test", _decode, 48)
    assert report["cer"] == pytest.approx(0.8)
    assert report["accuracy_loss"] == pytest.approx(0.0)
    worse = [Row([1, 2, 3, 4, 5], [1, 2, 3, 8, 9], label)]
    with pytest.raises(ParityError, match="loses accuracy"):
        judge(worse, "fp16", 0.10, "test", _decode, 48)


# ------------------------------------------------------------------------------------------------------
# CLI


def test_cli_help_has_examples(run_cli):
    proc = run_cli("export", "--help", check=True)
    assert "examples:" in proc.stdout and "--quantize" in proc.stdout and "--parity-clips" in proc.stdout


def test_cli_export_shows_its_steps_and_the_parity_clips(run_cli, tiny_whisper, tmp_path):
    proc = run_cli("export", "--base-model", tiny_whisper, "--out", tmp_path / "b", "--patient", "p1")
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stderr.splitlines() if line.startswith("export [")]
    assert [s.split(" ...")[0].split(":")[0] for s in steps if s.endswith("...")] == [
        f"export [1/4] loading {tiny_whisper}",
        "export [2/4] exporting the encoder and the decoder (with KV cache) to ONNX",
        "export [3/4] writing the fp32 model files",
        "export [4/4] parity check",
    ]
    assert re.search(r"export \[4/4\] parity check.*: \d+\.\d s", proc.stderr)  # each step timed
    assert "parity" in proc.stderr and "clip" in proc.stderr and "export done in" in proc.stderr
    assert proc.stdout.startswith(f"bundle {tmp_path / 'b'}: fp32")  # stdout keeps the result alone


def test_cli_refuses_existing_out(run_cli, base_bundle, tiny_whisper):
    proc = run_cli("export", "--base-model", tiny_whisper, "--out", base_bundle)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "--force" in proc.stderr


# ------------------------------------------------------------------------------------------------------
# the real whisper-base


@pytest.fixture(scope="module")
def _onnx_exports(tmp_path_factory) -> dict:
    return {"folder": tmp_path_factory.mktemp("onnx-exports")}


@pytest.fixture
def reused_onnx_export(_onnx_exports, monkeypatch):
    """Optimum's ONNX export of one model, made once for this file: the tests below export whisper-base three
    times (fp32, int8 refused, int8), and its tracing is the slow step. Each export still quantises, checks
    parity and writes its bundle from the same ONNX files the first one traced."""
    from resonance.export import onnx_export

    real = onnx_export.export_onnx

    def export_once(model, raw, dynamic_window=False):
        key = f"{model.config._name_or_path}|{model.config.max_source_positions}|{dynamic_window}"
        if key not in _onnx_exports:
            real(model, raw, dynamic_window)
            _onnx_exports[key] = shutil.copytree(raw, _onnx_exports["folder"] / str(len(_onnx_exports)))
        else:
            shutil.copytree(_onnx_exports[key], raw, dirs_exist_ok=True)
        return raw / "encoder_model.onnx", raw / "decoder_model_merged.onnx"

    monkeypatch.setattr(onnx_export, "export_onnx", export_once)


@pytest.mark.slow
def test_whisper_base_runtime_matches_pytorch(whisper_base, tmp_path, reused_onnx_export):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from resonance.audio import load_audio
    from resonance.runtime.transcriber import Transcriber
    from resonance.text import to_simplified

    bundle = export_bundle(str(whisper_base), tmp_path / "base", parity_clips=[DEMO_DATA / "take2"])
    parity = load_manifest(bundle).parity
    assert parity["tokens_identical"] == parity["clips"] == 8
    clip = DEMO_DATA / "take2" / "audio" / "0060_我还想吃一点.wav"
    result = Transcriber(bundle, options={"beam_size": 1}).transcribe(clip)  # greedy, as generate below
    processor = WhisperProcessor.from_pretrained(whisper_base)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_base).eval()
    audio = load_audio(clip)
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, language="zh", task="transcribe", max_new_tokens=40, num_beams=1)
    expected = to_simplified(processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
    assert result.text == expected == "我还想吃一点"
    # Beam search (the default: 4 beams) agrees on a clip greedy gets right.
    beam = Transcriber(bundle).transcribe(clip)
    assert beam.text == "我还想吃一点"


@pytest.mark.slow
def test_whisper_base_int8_within_tolerance(whisper_base, tmp_path, reused_onnx_export):
    """The *generic* model on the demo's dysarthric clips: with per-channel weights (the default preset) its
    greedy path falls apart (measured: +54 points of CER), which the parity check refuses with what to try;
    one scale per matrix passes. (A personal model is the other way round: README, Speed.)"""
    with pytest.raises(ParityError, match="--int8-preset per-tensor"):
        export_bundle(str(whisper_base), tmp_path / "q", quantize="int8", parity_clips=[DEMO_DATA / "take2"])
    assert not (tmp_path / "q").exists()
    bundle = export_bundle(
        str(whisper_base),
        tmp_path / "int8",
        quantize="int8",
        int8_preset="per-tensor",
        parity_clips=[DEMO_DATA / "take2"],
    )
    parity = load_manifest(bundle).parity
    assert parity["precision"] == "int8" and parity["criterion"] == "accuracy loss vs labels"
    assert parity["accuracy_loss"] <= parity["tolerance"] == 0.10
    # int8 layers and output projection; the embedding (a Gather, not quantised) stays float: 106 MB of it
    fp32_size = 82e6 + 208e6  # whisper-base fp32 encoder + decoder (embedding + 6 layers)
    assert (
        sum(e["bytes"] for k, e in load_manifest(bundle).files.items() if k != "tokenizer") < 0.7 * fp32_size
    )
