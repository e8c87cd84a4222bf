"""Training layer: config, labels/collation, window cut, CER, and a real (tiny) training run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

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
    """The default recipe (full fine-tuning of the encoder) through the CLI: the folder, the report, the model
    card, load_personal_model, export's refusal of a worse model, and no overwrite without --force."""
    out = tmp_path / "adapters" / "p1"
    args = ["train", "--data", demo_data, "--out", out, *_tiny_train_args(tiny_whisper, max_steps=3)]
    proc = run_cli(*args)
    assert proc.returncode in (0, 3), proc.stderr  # 3 = trained but not better (a random model can't improve)
    assert "full fine-tuning of the encoder trains" in proc.stderr
    for name in (
        "finetuned_weights.safetensors",
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
    made_with = json.loads((out / "train_config.json").read_text())
    assert made_with["window_seconds"] == 5.0 and made_with["learning_rate"] == 5e-5
    assert (made_with["finetune"], made_with["adapt"]) == ("full", "encoder")
    assert json.loads((out / "preprocessor_config.json").read_text())["chunk_length"] == 5
    assert not (out / "adapter_config.json").exists()  # not a LoRA adapter
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "load_personal_model" in card and "full fine-tuning of the encoder" in card
    _check_load_personal_model(out)

    # An adapter that made things worse beyond luck is not deployed by accident.
    worse = {**report, "improved": False, "comparison": {**report["comparison"], "result": "worse"}}
    (out / "report.json").write_text(json.dumps(worse))
    refused = run_cli("export", "--adapter", out, "--out", tmp_path / "bundle")
    assert refused.returncode == 2 and "--allow-worse" in refused.stderr
    assert not (tmp_path / "bundle").exists()

    before = (out / "finetuned_weights.safetensors").read_bytes()
    again = run_cli(*args)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert (out / "finetuned_weights.safetensors").read_bytes() == before  # the user's adapter is untouched


def _check_load_personal_model(adapter) -> None:
    """The Python entry point loads the adapter on its trained window: features from the adapter's processor
    go straight in, and merging gives the same logits as the unmerged model (peft's, for LoRA)."""
    import numpy as np
    import torch

    from resonance.train.personal import load_personal_model

    model, processor = load_personal_model(adapter)
    merged, _ = load_personal_model(adapter, merge=True)
    assert type(merged).__name__ == "WhisperForConditionalGeneration"
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape[-1] == 500  # 5 s of mel frames: the stock 3000 would be refused
    prompt = torch.tensor([[model.config.decoder_start_token_id]])
    with torch.no_grad():
        peft_logits = model(input_features=features, decoder_input_ids=prompt).logits
        merged_logits = merged(input_features=features, decoder_input_ids=prompt).logits
        assert model.generate(input_features=features, max_new_tokens=3).shape[-1] >= 1
    torch.testing.assert_close(peft_logits, merged_logits, rtol=1e-4, atol=1e-4)


def test_train_cli_bad_data_is_a_clear_error(tiny_whisper, tmp_path, run_cli):
    proc = run_cli(
        "train", "--data", tmp_path / "nope", "--out", tmp_path / "a", "--base-model", tiny_whisper
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "what to do" in proc.stderr
    assert not (tmp_path / "a").exists()


def test_selection_margin_is_the_noise_of_the_validation_set():
    from resonance.train.trainer import selection_margin

    # 10 held-out phrases (~45 characters) at CER 0.24: one standard error is ~0.064
    assert selection_margin(None, 0.2444, 45) == pytest.approx(0.064, abs=0.001)
    assert selection_margin(None, 0.2444, 450) < selection_margin(None, 0.2444, 45)  # more data, less noise
    assert selection_margin(None, 0.0, 12) > 0.05  # a perfect score on a few characters is still noisy
    assert selection_margin(0.0, 0.3, 45) == 0.0  # explicit: strict
    assert selection_margin(0.02, 0.3, 45) == 0.02


def _tiny_train_args(tiny_whisper, max_steps=2):
    """Options that make a training run take seconds on the tiny random model."""
    size = ["--max-steps", max_steps, "--batch-size", "4", "--window-seconds", "5", "--threads", "2"]
    return ["--base-model", tiny_whisper, *size]


def test_yaml_config_values_take_their_options_types(tiny_whisper, demo_data, tmp_path, run_cli):
    """... and the LoRA recipe, one option away from the default, still trains a peft adapter."""
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from resonance.train.window import shorten_audio_window

    out = tmp_path / "adapter"
    config = tmp_path / "recipe.yaml"
    # YAML reads 5e-4 as a string and q_proj,v_proj as one string; data and out come only from the file.
    config.write_text(
        f"data: {demo_data}\nout: {out}\nfinetune: lora\nadapt: both\nlearning_rate: 5e-4\n"
        "target_modules: q_proj,v_proj\naugment: 'no'\nkeep: best\npatience: '2'\nmax_train_samples: null\n",
        encoding="utf-8",
    )
    proc = run_cli("train", "--config", config, *_tiny_train_args(tiny_whisper))
    assert proc.returncode in (0, 3), proc.stderr
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["learning_rate"] == 5e-4 and saved["target_modules"] == ["q_proj", "v_proj"]
    assert saved["finetune"] == "lora" and not (out / "finetuned_weights.safetensors").exists()
    base = shorten_audio_window(WhisperForConditionalGeneration.from_pretrained(tiny_whisper), 5.0)
    assert PeftModel.from_pretrained(base, out).peft_config["default"].r == 16
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "A LoRA adapter" in card and "[More Information Needed]" not in card  # ours, not peft's
    _check_load_personal_model(out)
    assert saved["augment"] is False and saved["patience"] == 2 and saved["max_train_samples"] is None
    assert set(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == {
        "q_proj",
        "v_proj",
    }

    # Without --eval-data, and validation picking the step (keep: best), the report says its accuracy comes
    # from the validation split, i.e. is optimistic.
    report = json.loads((out / "report.json").read_text())
    assert report["eval_is_validation"] is True and "optimistic" in report["eval_source"]
    text = (out / "report.txt").read_text()
    assert "optimistic" in text and "--eval-data" in text

    config.write_text(f"data: {demo_data}\nout: {tmp_path / 'b'}\nlearning_rate: fast\n", encoding="utf-8")
    bad = run_cli("train", "--config", config, *_tiny_train_args(tiny_whisper))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "learning_rate" in bad.stderr and str(config) in bad.stderr and "'fast'" in bad.stderr


def test_config_file_values_are_converted_or_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora_dropout: 0\nforce: yes\ntarget_modules: [' q_proj', v_proj]\nthreads: 2.0\n")
    config = TrainConfig.from_file(path)
    assert config.lora_dropout == 0.0 and isinstance(config.lora_dropout, float) and config.force is True
    assert config.target_modules == ["q_proj", "v_proj"] and config.threads == 2
    path.write_text("learning_rate: 5e-4\nweight_decay: 1E-2\n")  # YAML 1.1 reads these as strings
    config = TrainConfig.from_file(path)
    assert (config.learning_rate, config.weight_decay) == (5e-4, 1e-2)
    for bad in (
        "batch_size: 2.5",
        "augment: maybe",
        "target_modules: {q: 1}",
        "learning_rate: .nan",
        "epochs:",
    ):
        path.write_text(bad + "\n")
        with pytest.raises(ResonanceError, match=rf"{bad.split(':')[0]} in .*c\.yaml"):
            TrainConfig.from_file(path)
    path.write_text("- lora_r\n")
    with pytest.raises(ResonanceError, match="mapping"):
        TrainConfig.from_file(path)


def test_required_options_are_checked_after_merging_the_config(tmp_path, run_cli):
    config = tmp_path / "recipe.yaml"
    config.write_text("lora_r: 8\n", encoding="utf-8")
    proc = run_cli("train", "--config", config, "--out", tmp_path / "a")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--data required" in proc.stderr and "what to do" in proc.stderr
    proc = run_cli("train", "--config", config)
    assert "--data and --out required" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_numeric_options_are_refused_before_training(tmp_path, run_cli):
    proc = run_cli("train", "--data", tmp_path, "--out", tmp_path / "a", "--max-steps", "0")
    assert proc.returncode == 2 and "max_steps=0" in proc.stderr and "Traceback" not in proc.stderr
    for option, value in (("evals_per_epoch", 0), ("threads", 0), ("lora_dropout", 1.0), ("patience", -1)):
        with pytest.raises(ResonanceError, match=option):
            TrainConfig(**{option: value})


def test_no_eval_set_is_refused_before_training(tmp_path, demo_data, run_cli):
    out = tmp_path / "a"
    proc = run_cli("train", "--data", demo_data, "--out", out, "--val-fraction", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--eval-data" in proc.stderr and "--val-fraction" in proc.stderr
    assert not out.exists()
    TrainConfig(val_fraction=0, eval_data=str(demo_data))  # a second take is enough


class _Interrupted(Exception):
    """Stands for Ctrl+C / a killed process in the middle of training."""


def test_resume_continues_from_the_checkpoint(tiny_whisper, demo_data, tmp_path, run_cli, monkeypatch):
    import torch

    from resonance.train import trainer

    out = tmp_path / "adapter"
    # 23 training clips, batches of 4: 6 steps an epoch, 3 evaluations an epoch = a checkpoint every 2 steps.
    options = dict(batch_size=4, window_seconds=5.0, threads=2, evals_per_epoch=3.0, patience=0)
    config = TrainConfig(
        data=str(demo_data), out=str(out), base_model=str(tiny_whisper), max_steps=4, **options
    )
    save, saved_to = torch.save, []

    def killed_while_writing_the_second_checkpoint(obj, path, *args, **kwargs):
        saved_to.append(Path(path))
        if len(saved_to) == 2:  # step 4's checkpoint: half written when the process dies
            Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise _Interrupted
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_while_writing_the_second_checkpoint)
    with pytest.raises(_Interrupted):
        trainer.train(config)
    monkeypatch.setattr(torch, "save", save)
    checkpoint_path = tmp_path / "adapter.partial" / "checkpoint.pt"
    # Written under a temporary name and renamed (issue #12): step 2's checkpoint survived the kill.
    assert all(path.name.startswith(".checkpoint.pt.tmp-") for path in saved_to)
    assert sorted(p.name for p in checkpoint_path.parent.iterdir()) == ["checkpoint.pt"]
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    assert checkpoint["step"] == 2 and not out.exists()
    # Mark the saved history, so the report shows whether the run went on from it or started over.
    checkpoint["history"]["loss"] = [[1, 111.0], [2, 222.0]]
    torch.save(checkpoint, checkpoint_path)

    args = [
        "train",
        "--data",
        demo_data,
        "--out",
        out,
        "--evals-per-epoch",
        "3",
        "--patience",
        "0",
        "--resume",
    ]
    refused = run_cli(*args, *_tiny_train_args(tiny_whisper, max_steps=4), "--learning-rate", "1e-3")
    assert refused.returncode == 2 and "cannot resume" in refused.stderr
    assert "learning_rate=5e-05 (now 0.001)" in refused.stderr
    assert checkpoint_path.exists()

    proc = run_cli(*args, *_tiny_train_args(tiny_whisper, max_steps=4))
    assert proc.returncode in (0, 3), proc.stderr
    assert "resumed from step 2 of 4" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 4 and report["history"]["loss"][:2] == [[1, 111.0], [2, 222.0]]
    assert [s for s, _ in report["history"]["loss"]] == [1, 2, 3, 4]  # steps 3 and 4 only were trained
    assert (out / "finetuned_weights.safetensors").is_file() and not checkpoint_path.parent.exists()


def test_a_checkpoint_from_before_the_recipe_options_resumes_only_as_lora(tmp_path):
    """A checkpoint whose options predate --finetune/--adapt was a LoRA run on encoder and decoder: resuming
    it under today's default (full fine-tuning of the encoder) is refused, with the LoRA recipe it goes on."""
    import dataclasses

    import torch

    from resonance.train.config import LORA_RECIPE
    from resonance.train.trainer import CHECKPOINT_KEYS, _load_checkpoint, _resolved

    lora = TrainConfig(data="take1", out=str(tmp_path / "a"), **LORA_RECIPE)
    made_with = {k: v for k, v in _resolved(lora).items() if k not in LORA_RECIPE}
    path = tmp_path / "checkpoint.pt"
    torch.save({**{k: 0 for k in CHECKPOINT_KEYS}, "lora": {}, "config": made_with}, path)
    with pytest.raises(
        ResonanceError, match=r"finetune='lora' \(now 'full'\), adapt='both' \(now 'encoder'\)"
    ):
        _load_checkpoint(
            path, dataclasses.replace(lora, finetune="full", adapt="encoder", learning_rate=5e-4)
        )
    assert _load_checkpoint(path, lora)["config"] == made_with


# --- never lose data, fail clearly (issue #12) -------------------------------------------------------------


def tree(root: Path) -> dict:
    """Every file under root -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_train_into_the_data_folder_with_force_keeps_the_recordings(demo_data, tmp_path, run_cli):
    """The issue's case: exit 0 and audio/ + labels.json gone. Now refused before anything is loaded."""
    before = tree(demo_data)
    proc = run_cli("train", "--data", demo_data, "--out", demo_data, "--force")
    assert proc.returncode == 2
    assert f"the adapter folder '{demo_data}' is the data folder" in proc.stderr
    assert "what to do: choose an adapter folder apart" in proc.stderr and "Traceback" not in proc.stderr
    assert tree(demo_data) == before


@pytest.mark.parametrize("where", ["inside", "parent", "a folder of the user's"])
def test_train_force_replaces_only_an_adapter(demo_data, tmp_path, where):
    from resonance.train.trainer import train

    out = {
        "inside": demo_data / "adapter",
        "parent": demo_data.parent,
        "a folder of the user's": tmp_path / "x",
    }
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine", encoding="utf-8")
    before, notes = tree(demo_data), tree(tmp_path / "x")
    expected = {"inside": "is inside the data folder", "parent": "holds the data folder"}.get(
        where, "is not an adapter made by resonance"
    )
    with pytest.raises(ResonanceError, match=expected):
        train(TrainConfig(data=str(demo_data), out=str(out[where]), force=True))
    assert tree(demo_data) == before and tree(tmp_path / "x") == notes


def test_a_damaged_checkpoint_with_resume_is_a_clear_error(demo_data, tmp_path, run_cli):
    import torch

    from resonance.train.trainer import train

    partial = tmp_path / "adapter.partial"
    partial.mkdir()
    (partial / "checkpoint.pt").write_bytes(b"PK\x03\x04 a checkpoint cut short")
    proc = run_cli("train", "--data", demo_data, "--out", tmp_path / "adapter", "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"the checkpoint {partial / 'checkpoint.pt'} is damaged" in proc.stderr
    assert "run without --resume to start over" in proc.stderr
    torch.save({"step": 3}, partial / "checkpoint.pt")  # loads, but is not one of ours
    with pytest.raises(ResonanceError, match="not a training checkpoint of resonance"):
        train(TrainConfig(data=str(demo_data), out=str(tmp_path / "adapter"), resume=True))


def test_a_label_longer_than_whisper_can_write_is_a_clear_error(tiny_whisper, make_dataset, tmp_path):
    from resonance.train.trainer import train

    data = make_dataset([("我想喝水", np.zeros(16000, np.float32) + 0.1, 16000)] * 2)
    labels = json.loads((data / "labels.json").read_text(encoding="utf-8"))
    labels[1]["text"] = "我想喝水" * 200
    (data / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ResonanceError, match=r"the label of audio/001_我想喝水\.wav is [\d,]+ tokens long"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "a"), base_model=str(tiny_whisper)))


def test_learning_curve_never_writes_into_the_data_or_a_users_folder(demo_data, tmp_path):
    from resonance.train.curve import learning_curve

    config = TrainConfig(data=str(demo_data), eval_data=str(demo_data), out=str(tmp_path / "c"))
    before = tree(demo_data)
    with pytest.raises(ResonanceError, match="is the data folder"):
        learning_curve(config, [5], demo_data)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ResonanceError, match="not a learning-curve folder made by resonance"):
        learning_curve(config, [5], tmp_path / "mine")
    assert tree(demo_data) == before and sorted(p.name for p in (tmp_path / "mine").iterdir()) == [
        "notes.txt"
    ]


def test_eval_beams_decode_the_personal_model_and_the_generic_one_stays_greedy(
    tiny_whisper, demo_data, tmp_path, monkeypatch
):
    """--eval-beams 4 measures the personal model as the device decodes (4 beams). The generic model stays
    greedy (beam search without a fallback loops on it), and so do the validation passes that pick the epoch
    (cheap, and only compared with each other)."""
    from resonance.train import trainer

    decoded, real = [], trainer.transcribe_batch

    def recording(model, fe, tokenizer, examples, *args, num_beams=1, **kwargs):
        decoded.append((len(examples), num_beams))
        return real(model, fe, tokenizer, examples, *args, num_beams=num_beams, **kwargs)

    monkeypatch.setattr(trainer, "transcribe_batch", recording)
    config = one_step_config(tiny_whisper, demo_data, tmp_path / "a", eval_beams=4)
    report = trainer.train(config)
    n_eval = report["n_eval"]  # no --eval-data: the validation phrases are also the eval set
    assert decoded[0] == (n_eval, 1) and decoded[-1] == (n_eval, 4)  # generic before, personal after
    assert decoded[1:-1] == [(n_eval, 1)]  # the validation pass (here the eval set too)
    assert report["settings"]["eval_beams"] == 4
    with pytest.raises(ResonanceError, match="eval_beams"):
        TrainConfig(data="d", out="o", eval_beams=0)


def test_label_smoothing_at_zero_is_whispers_own_loss_and_above_zero_spreads_it(tiny_whisper):
    import torch
    from transformers import WhisperForConditionalGeneration

    from resonance.train.trainer import smoothed_loss

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper).eval()
    features = torch.randn(1, model.config.num_mel_bins, 3000)
    decoder_input = torch.tensor([[model.config.decoder_start_token_id, 50, 60, 70]])
    labels = torch.tensor([[-100, 60, 70, model.config.eos_token_id]])  # the prefix is masked
    with torch.no_grad():
        output = model(input_features=features, decoder_input_ids=decoder_input, labels=labels)
    plain = smoothed_loss(output.logits, labels, TrainConfig(data="d", out="o"))
    smoothed = smoothed_loss(output.logits, labels, TrainConfig(data="d", out="o", label_smoothing=0.1))
    torch.testing.assert_close(plain, output.loss)
    assert not torch.isclose(smoothed, plain)


def test_a_cut_short_recording_is_named_with_what_to_do_about_the_data(demo_data):
    """The audio loader speaks to an upload ("send the whole recording again"); training names the file."""
    from types import SimpleNamespace

    from resonance.data.labels import load_labels
    from resonance.train.data import load_examples

    utterances = load_labels(demo_data)
    cut = utterances[3].audio
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    def tokenizer(text):
        return SimpleNamespace(input_ids=[0, 1, 2])

    with pytest.raises(ResonanceError) as refused:
        load_examples(utterances, tokenizer)
    assert refused.value.message.startswith(f"{utterances[3].rel}: the WAV file is cut short")
    assert "remove it from labels.json" in refused.value.hint and "data check" in refused.value.hint
    assert "send the whole recording again" not in str(refused.value)


def test_testing_on_the_training_recordings_is_flagged_as_optimistic(tiny_whisper, demo_data, tmp_path):
    """--eval-data the training folder itself (spelt another way): each test recording trained on is counted
    and the report warns the family and the technician. The validation split's are not trained on."""
    from resonance.train.trainer import train

    config = one_step_config(
        tiny_whisper, demo_data, tmp_path / "a", eval_data=f"{demo_data}/../{demo_data.name}/"
    )
    report = train(config)
    assert report["n_eval"] == 26 and report["n_eval_trained_on"] == report["n_train"] > 0
    expected = f"{report['n_train']} of the 26 test recordings were trained on: the measure is optimistic"
    assert any(w.startswith(expected) for w in report["warnings"])
    assert any("也用来训练过" in a["zh"] for a in report["advice"])


def test_a_missing_eval_data_folder_names_the_option(demo_data, tmp_path):
    """train reads two folders alike: the message says which option holds the wrong one."""
    from resonance.train.data import Recordings

    config = TrainConfig(data=str(demo_data), eval_data=str(tmp_path / "nope"), out=str(tmp_path / "a"))
    with pytest.raises(ResonanceError, match=r"^--eval-data: data folder '.*nope' does not exist"):
        Recordings.of(config)
    with pytest.raises(ResonanceError, match=r"^--data: data folder '.*nope' does not exist"):
        Recordings.of(TrainConfig(data=str(tmp_path / "nope"), out=str(tmp_path / "a")))


def one_step_config(tiny_whisper: Path, data: Path, out: Path, **changes) -> TrainConfig:
    """One training step of the tiny model on ``data`` at a 5 s window: for tests of what is measured."""
    options = dict(max_steps=1, batch_size=4, window_seconds=5.0, threads=2)
    return TrainConfig(data=str(data), out=str(out), base_model=str(tiny_whisper), **{**options, **changes})
