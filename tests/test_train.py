"""Training layer: config, labels/collation, window cut, CER, and a real (tiny) training run through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resonance.errors import ResonanceError
from resonance.text import normalize_for_cer
from resonance.train.config import TrainConfig
from resonance.train.data import PREFIX_TOKENS, Example, collate, split_examples
from resonance.train.evaluate import cer, max_new_tokens
from resonance.train.window import choose_window


def test_cer_ignores_script_punctuation_and_spaces():
    assert normalize_for_cer("我想喝水。") == normalize_for_cer("我想 喝水")
    assert normalize_for_cer("開燈！") == "开灯"
    assert cer(["我想喝水"], ["我想喝水!"]) == 0.0
    assert cer(["我想喝水"], ["你想喝水"]) == pytest.approx(0.25)
    assert cer(["帮我开灯", "谢谢"], ["帮我开灯", ""]) == pytest.approx(2 / 6)


def test_max_new_tokens_grows_with_audio_but_is_capped():
    assert max_new_tokens(1.0) < max_new_tokens(3.0) < 100
    assert max_new_tokens(1000.0) == 440


def test_choose_window_fits_longest_clip():
    assert choose_window(2.9) == 5.0
    assert choose_window(4.8) == 10.0
    assert choose_window(29.0) == 30.0


def test_config_rejects_bad_values_and_unknown_keys(tmp_path):
    with pytest.raises(ResonanceError, match="window_seconds"):
        TrainConfig(window_seconds=7)
    with pytest.raises(ResonanceError, match="learning_rate"):
        TrainConfig(learning_rate=0)
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"lora_rank": 8}))
    with pytest.raises(ResonanceError, match="lora_rank"):
        TrainConfig.from_file(bad)
    good = tmp_path / "c.yaml"
    good.write_text("lora_r: 8\ntarget_modules: [q_proj, k_proj]\n")
    config = TrainConfig.from_file(good, lora_r=4)
    assert config.lora_r == 4 and config.target_modules == ["q_proj", "k_proj"]


def test_split_holds_out_whole_phrases():
    examples = [Example(t, np.zeros(16000, np.float32), [1]) for t in ["a", "b", "c", "a", "d", "e"] * 2]
    train, val = split_examples(examples, 0.2, seed=1)
    assert val and not {e.text for e in train} & {e.text for e in val}
    assert len(train) + len(val) == len(examples)


def test_collate_masks_prefix_and_keeps_end_of_text(tiny_whisper):
    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(tiny_whisper)
    tok = processor.tokenizer
    tok.set_prefix_tokens(language="zh", task="transcribe", predict_timestamps=False)
    ids = tok("我想喝水").input_ids
    batch = [
        Example("我想喝水", np.zeros(16000, np.float32), ids[1:]),
        Example("谢谢", np.zeros(8000, np.float32), tok("谢谢").input_ids[1:]),
    ]
    features, decoder_input, labels = collate(
        batch, processor.feature_extractor, 30.0, ids[0], tok.eos_token_id
    )
    assert tuple(features.shape) == (2, 80, 3000)
    assert (
        decoder_input[0, 0] == ids[0] and decoder_input[0, 1:].tolist() == ids[1:-1]
    )  # shifted right by one
    assert (labels[0, :PREFIX_TOKENS] == -100).all()
    assert labels[0, len(ids) - 2] == tok.eos_token_id  # the model learns to stop
    assert (labels[1, len(batch[1].label_ids) :] == -100).all()  # padding carries no loss


def test_shortened_window_takes_fewer_frames(tiny_whisper):
    import torch
    from transformers import WhisperForConditionalGeneration

    from resonance.train.window import shorten_audio_window, window_of

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    first_rows = model.get_encoder().embed_positions.weight[:250].clone()
    shorten_audio_window(model, 5.0)
    assert window_of(model) == 5.0
    assert torch.equal(model.get_encoder().embed_positions.weight, first_rows)
    out = model.get_encoder()(torch.zeros(1, 80, 500)).last_hidden_state
    assert tuple(out.shape) == (1, 250, model.config.d_model)


def test_train_cli_end_to_end_on_tiny_model(tiny_whisper, demo_data, tmp_path, run_cli):
    out = tmp_path / "adapters" / "p1"
    args = [
        "train",
        "--data",
        demo_data,
        "--out",
        out,
        "--base-model",
        tiny_whisper,
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--window-seconds",
        "5",
        "--threads",
        "2",
    ]
    proc = run_cli(*args)
    assert proc.returncode in (0, 3), proc.stderr  # 3 = trained but not better (a random model can't improve)
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "train_config.json",
        "report.json",
        "report.txt",
        "report.png",
        "preprocessor_config.json",
        "tokenizer.json",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and report["window_seconds"] == 5.0
    assert {"cer_before", "cer_after", "utterances", "samples_per_second", "verdict"} <= set(report)
    assert json.loads((out / "train_config.json").read_text())["window_seconds"] == 5.0
    assert json.loads((out / "preprocessor_config.json").read_text())["chunk_length"] == 5

    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from resonance.train.window import shorten_audio_window

    base = shorten_audio_window(WhisperForConditionalGeneration.from_pretrained(tiny_whisper), 5.0)
    assert PeftModel.from_pretrained(base, out).peft_config["default"].r == 16

    # An adapter that made things worse is not deployed by accident.
    (out / "report.json").write_text(json.dumps({**report, "improved": False}))
    refused = run_cli("export", "--adapter", out, "--out", tmp_path / "bundle")
    assert refused.returncode == 2 and "--allow-worse" in refused.stderr
    assert not (tmp_path / "bundle").exists()

    before = (out / "adapter_model.safetensors").read_bytes()
    again = run_cli(*args)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == before  # the user's adapter is untouched


def test_train_cli_bad_data_is_a_clear_error(tiny_whisper, tmp_path, run_cli):
    proc = run_cli(
        "train", "--data", tmp_path / "nope", "--out", tmp_path / "a", "--base-model", tiny_whisper
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "what to do" in proc.stderr
    assert not (tmp_path / "a").exists()


def _report(**overrides):
    report = {
        "cer_before": 0.8,
        "cer_after": 0.3,
        "n_train": 20,
        "n_validation": 2,
        "n_eval": 3,
        "train_texts": ["我想喝水"] * 1,
        "history": {"loss": [[1, 2.0], [2, 1.0]], "val": [[1, 0.5], [2, 0.7]]},
        "best_step": 1,
        "eval_source": "x",
        "data_seconds": 30.0,
        "steps": 2,
        "train_seconds": 1.0,
        "device": "cpu",
        "samples_per_second": 8.0,
        "window_seconds": 5.0,
        "utterances": [{"reference": "我想喝水", "before": "你想喝水", "hypothesis": "我想喝水"}],
    }
    return {**report, **overrides}


def test_report_says_in_words_whether_it_helped_and_warns(tmp_path):
    from resonance.train.report import write_report

    written = write_report(tmp_path, _report())
    assert written == json.loads((tmp_path / "report.json").read_text())
    assert "better" in written["verdict"] and "20% -> 70%" in written["verdict"]
    warnings = " ".join(written["warnings"])
    assert "Only 22 recordings" in warnings and "Only 3 evaluation" in warnings and "over-fitting" in warnings
    assert "我想喝水 | 你想喝水 | 我想喝水" in (tmp_path / "report.txt").read_text()
    assert (tmp_path / "report.png").stat().st_size > 1000

    worse = write_report(tmp_path, _report(cer_after=0.9))
    assert "NOT better" in worse["verdict"] and "--allow-worse" in worse["verdict"]


def test_selection_margin_is_the_noise_of_the_validation_set():
    from resonance.train.trainer import selection_margin

    # 10 held-out phrases (~45 characters) at CER 0.24: one standard error is ~0.064
    assert selection_margin(None, 0.2444, 45) == pytest.approx(0.064, abs=0.001)
    assert selection_margin(None, 0.2444, 450) < selection_margin(None, 0.2444, 45)  # more data, less noise
    assert selection_margin(None, 0.0, 12) > 0.05  # a perfect score on a few characters is still noisy
    assert selection_margin(0.0, 0.3, 45) == 0.0  # explicit: strict
    assert selection_margin(0.02, 0.3, 45) == 0.02
