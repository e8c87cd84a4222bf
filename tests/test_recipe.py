"""The recipe's variants (train/adaptation.py, train/distill.py, --seeds): where and how Whisper is adapted,
each variant trained, saved, loaded again and exported, on the tiny random Whisper."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from resonance.errors import ResonanceError
from resonance.train.config import (
    BEFORE_KEEP,
    FULL_LEARNING_RATE,
    LORA_LEARNING_RATE,
    LORA_RECIPE,
    TrainConfig,
)


def _tiny_config(tiny_whisper, data, out, **options) -> TrainConfig:
    fast = dict(max_steps=2, batch_size=4, window_seconds=5.0, threads=2)
    return TrainConfig(data=str(data), out=str(out), base_model=str(tiny_whisper), **{**fast, **options})


@pytest.fixture
def no_decoding(monkeypatch):
    """Training without the evaluation decodes: a random model writes up to the token limit, and these tests
    look at the weights, not at transcripts."""
    from resonance.train import trainer

    monkeypatch.setattr(
        trainer, "_transcribe", lambda model, fe, tok, examples, *rest, **options: [""] * len(examples)
    )


def _lora_ranks(model) -> dict:
    """{"encoder": {ranks}, "decoder": {ranks}} of the LoRA A matrices in a peft Whisper."""
    ranks: dict = {"encoder": set(), "decoder": set()}
    for name, param in model.named_parameters():
        if "lora_A" in name:
            ranks["encoder" if ".encoder." in name else "decoder"].add(param.shape[0])
    return ranks


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, {"encoder": {16}, "decoder": {16}}),
        ({"adapt": "encoder"}, {"encoder": {16}, "decoder": set()}),
        ({"adapt": "decoder"}, {"encoder": set(), "decoder": {16}}),
        ({"decoder_lora_r": 4}, {"encoder": {16}, "decoder": {4}}),
    ],
)
def test_lora_goes_where_adapt_says_and_survives_saving(tiny_whisper, tmp_path, options, expected):
    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from resonance.train.adaptation import make_trainable

    config = TrainConfig(**{**LORA_RECIPE, **options})
    model = make_trainable(WhisperForConditionalGeneration.from_pretrained(tiny_whisper), config)
    assert _lora_ranks(model) == expected
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)  # the base weights stay frozen
    if config.decoder_lora_r:  # the decoder's update keeps the encoder's scale alpha / r
        scales = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", 0), dict)}
        assert scales == {config.lora_alpha / config.lora_r}

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(tiny_whisper), tmp_path)
    assert _lora_ranks(again) == expected
    features, prompt = torch.randn(1, 80, 3000), torch.tensor([[50258]])
    with torch.no_grad():
        torch.testing.assert_close(
            again.eval()(input_features=features, decoder_input_ids=prompt).logits,
            model.eval()(input_features=features, decoder_input_ids=prompt).logits,
        )


def test_variant_options_are_checked():
    for options, name in (
        ({"finetune": "qlora"}, "finetune"),
        ({"adapt": "all"}, "adapt"),
        ({"adapt": "encoder", "decoder_lora_r": 4}, "decoder_lora_r"),
        ({"finetune": "full", "decoder_lora_r": 4}, "decoder_lora_r"),
        ({"decoder_lora_r": 0}, "decoder_lora_r"),
        ({"adapt": "encoder", "distill_weight": 1.0}, "distill_weight"),
        (
            {"distill_weight": 1.0},
            "distill_weight",
        ),  # the default trains the encoder only: no decoder to keep
        ({"distill_weight": -1.0}, "distill_weight"),
    ):
        with pytest.raises(ResonanceError, match=name):
            TrainConfig(**options)
    # Full fine-tuning moves the pretrained weights themselves: its own, smaller default step.
    assert TrainConfig().peak_learning_rate == FULL_LEARNING_RATE == 5e-5
    assert TrainConfig(finetune="lora").peak_learning_rate == LORA_LEARNING_RATE > FULL_LEARNING_RATE
    assert TrainConfig(finetune="full", learning_rate=3e-5).peak_learning_rate == 3e-5


def test_the_default_recipe_is_the_studys_winner_as_eval_curve_runs_it():
    """`resonance eval curve` with no recipe option trains exactly what the study's full-encoder-keep-last
    runs trained (README, "Recipe study"): the study's rows are the default's rows."""
    from resonance.cli import build_parser
    from resonance.train.cli import CURVE_REQUIRED, _config_from_args
    from resonance.train.study import VARIANTS, variant_config
    from resonance.train.trainer import _resolved

    where = dict(data="take1", eval_data="take2", base_model="models/whisper-base", threads=2, out="runs/x")
    command = (
        "eval curve --data take1 --eval-data take2 --out runs/x --base-model models/whisper-base --threads 2"
    )
    args = build_parser().parse_args([*command.split(), "--seeds", "3"])
    curve = _resolved(_config_from_args(args, CURVE_REQUIRED))
    study = _resolved(variant_config("full-encoder-keep-last", **where))
    assert curve == study and curve["finetune"] == "full" and curve["adapt"] == "encoder"
    assert curve["learning_rate"] == 5e-5 and curve["keep"] == "last"
    # The study's earlier winner differs from today's default in the kept step only.
    before = _resolved(variant_config("full-encoder-5e-5", **where))
    assert {k: v for k, v in before.items() if curve[k] != v} == {"keep": "best"}
    # The old default stays one flag away, and the study's name for it says what it is.
    lora = _resolved(variant_config("lora-both", **where))
    assert {k: v for k, v in lora.items() if curve[k] != v} == {
        "finetune": "lora",
        "adapt": "both",
        "learning_rate": LORA_LEARNING_RATE,
        "keep": "best",
    }
    assert "default" not in VARIANTS  # a name that changes meaning when the default does


def test_saved_options_from_before_the_recipe_options_mean_the_lora_recipe():
    """An adapter trained before --finetune/--adapt existed was LoRA on encoder and decoder: its
    train_config.json lacks both keys, which must not be read as today's default."""
    old = {"lora_r": 16, "learning_rate": 5e-4, "data": "take1", "a_key_of_long_ago": 1}
    values = TrainConfig.saved_values(old)
    assert values == {
        "finetune": "lora",
        "adapt": "both",
        "keep": "best",
        "lora_r": 16,
        "learning_rate": 5e-4,
        "data": "take1",
    }
    assert TrainConfig(**values).peak_learning_rate == 5e-4
    assert TrainConfig.saved_values({}) == {**LORA_RECIPE, **BEFORE_KEEP}
    # Before --keep existed the best validation step was kept (and training stopped early), whatever the recipe.
    before_keep = {"finetune": "full", "adapt": "encoder", "learning_rate": 5e-5}
    assert TrainConfig.saved_values(before_keep) == {**before_keep, "keep": "best"}
    recent = {**before_keep, "keep": "last"}
    assert TrainConfig.saved_values(recent) == recent  # what a file says wins


def test_full_finetune_of_the_encoder_saves_loads_and_exports(tiny_whisper, demo_data, tmp_path, no_decoding):
    """--finetune full --adapt encoder: the folder holds the trained encoder tensors only; load_personal_model
    and export apply them to the base model, cut to the trained window, and the bundle matches PyTorch."""
    import torch
    from safetensors.torch import load_file
    from transformers import WhisperForConditionalGeneration

    pytest.importorskip("optimum.exporters.onnx")
    from resonance.export.onnx_export import export_bundle
    from resonance.runtime.bundle import load_manifest
    from resonance.train.adaptation import FULL_WEIGHTS
    from resonance.train.personal import load_personal_model
    from resonance.train.trainer import train

    out = tmp_path / "full"
    config = _tiny_config(tiny_whisper, demo_data, out, finetune="full", adapt="encoder", learning_rate=1e-2)
    report = train(config)
    assert not (out / "adapter_config.json").exists()
    weights = load_file(str(out / FULL_WEIGHTS))
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    base_params = dict(base.named_parameters())
    assert weights and all(k.startswith("model.encoder.") for k in weights)
    assert "model.encoder.embed_positions.weight" not in weights  # the fixed sinusoids are never trained
    assert sum(p.numel() for p in weights.values()) == report["trainable_parameters"]
    assert any(not torch.equal(w, base_params[k]) for k, w in weights.items())  # it did train
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["finetune"] == "full" and saved["learning_rate"] == 1e-2
    assert "finetuned_weights.safetensors" in (out / "README.md").read_text(encoding="utf-8")

    model, processor = load_personal_model(out)
    assert type(model).__name__ == "WhisperForConditionalGeneration"
    loaded = dict(model.named_parameters())
    assert all(torch.equal(loaded[k], w) for k, w in weights.items())
    assert torch.equal(
        loaded["model.decoder.layers.0.fc1.weight"], base_params["model.decoder.layers.0.fc1.weight"]
    )

    bundle = export_bundle(None, tmp_path / "bundle", adapter=out, allow_worse=True)
    manifest = load_manifest(bundle)
    assert manifest.audio.window_seconds == 5.0 and manifest.adapter == str(out)
    assert manifest.parity["tokens_identical"] == manifest.parity["clips"]
    _check_bundle_matches(bundle, model, processor)

    # Tensors of another model (another shape, or a name this base does not have): named, not a traceback.
    from safetensors.torch import save_file

    for bad in (
        {"model.encoder.layers.0.fc1.weight": torch.zeros(3, 3)},
        {"model.encoder.extra": torch.zeros(1)},
    ):
        save_file(bad, str(out / FULL_WEIGHTS))
        with pytest.raises(ResonanceError, match="does not fit this base model"):
            load_personal_model(out)


def _check_bundle_matches(bundle, model, processor) -> None:
    """The bundle's first decoder step gives the PyTorch model's logits."""
    import onnxruntime as ort
    import torch

    from resonance.runtime.bundle import load_manifest

    manifest = load_manifest(bundle)
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    features = processor(audio, sampling_rate=16000, return_tensors="np").input_features
    encoder = ort.InferenceSession(str(bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(bundle / "decoder.onnx"), providers=["CPUExecutionProvider"])
    hidden = encoder.run(None, {encoder.get_inputs()[0].name: features})[0]
    feeds = {
        "input_ids": np.asarray([manifest.tokens.sot_sequence]),
        "encoder_hidden_states": hidden,
        "use_cache_branch": np.asarray([False]),
    }
    for arg in decoder.get_inputs():
        if arg.name.startswith("past_key_values."):
            feeds[arg.name] = np.zeros((1, arg.shape[1], 0, arg.shape[3]), dtype=np.float32)
    onnx_logits = decoder.run(["logits"], feeds)[0]
    with torch.no_grad():
        expected = model(
            input_features=torch.from_numpy(features),
            decoder_input_ids=torch.tensor([manifest.tokens.sot_sequence]),
        ).logits.numpy()
    assert np.abs(onnx_logits - expected).max() < 1e-3


def test_encoder_only_lora_exports(tiny_whisper, demo_data, tmp_path, no_decoding):
    """LoRA on the encoder alone (a regex of module names in adapter_config.json) merges and exports."""
    pytest.importorskip("optimum.exporters.onnx")
    from resonance.export.onnx_export import export_bundle
    from resonance.train.personal import load_personal_model
    from resonance.train.trainer import train

    out = tmp_path / "enc"
    train(_tiny_config(tiny_whisper, demo_data, out, finetune="lora", adapt="encoder", learning_rate=1e-2))
    assert "encoder" in json.loads((out / "adapter_config.json").read_text())["target_modules"]
    model, processor = load_personal_model(out, merge=True)
    bundle = export_bundle(None, tmp_path / "bundle", adapter=out, allow_worse=True)
    _check_bundle_matches(bundle, model, processor)


def test_distillation_keeps_the_decoder_near_the_generic_one(tiny_whisper, demo_data, tmp_path, no_decoding):
    """The same run with and without --distill-weight: the KL term holds the trained decoder's next-token
    distribution closer to the generic decoder's (measured on the training clips, the trained encoder's
    output fed to both decoders)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from resonance.data.labels import load_labels
    from resonance.train.data import collate, load_examples
    from resonance.train.distill import GenericDecoderTeacher, kl_to_teacher
    from resonance.train.personal import load_personal_model
    from resonance.train.trainer import train
    from resonance.train.window import shorten_audio_window

    base = shorten_audio_window(WhisperForConditionalGeneration.from_pretrained(tiny_whisper), 5.0)
    teacher = GenericDecoderTeacher(base)
    tokenizer = WhisperProcessor.from_pretrained(tiny_whisper).tokenizer
    tokenizer.set_prefix_tokens(language="zh", task="transcribe", predict_timestamps=False)
    examples = load_examples(load_labels(str(demo_data))[:8], tokenizer)

    def drift(adapter) -> float:
        model, processor = load_personal_model(adapter, merge=True)
        sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        features, decoder_input, labels = collate(
            examples, processor.feature_extractor, 5.0, sot, tokenizer.eos_token_id
        )
        with torch.no_grad():
            output = model(input_features=features, decoder_input_ids=decoder_input)
            generic = teacher.logits(decoder_input, output.encoder_last_hidden_state)
            return kl_to_teacher(output.logits, generic, labels).item()

    options = dict(finetune="lora", adapt="decoder", learning_rate=3e-2, max_steps=6, lora_dropout=0.0)
    config = _tiny_config(tiny_whisper, demo_data, tmp_path / "plain", **options)
    train(config)
    train(dataclasses.replace(config, out=str(tmp_path / "distilled"), distill_weight=100.0))
    plain, distilled = drift(tmp_path / "plain"), drift(tmp_path / "distilled")
    assert plain > 0.01  # training moved the decoder …
    assert distilled < 0.5 * plain  # … and the KL term held it back
    saved = json.loads((tmp_path / "distilled" / "train_config.json").read_text())
    assert saved["distill_weight"] == 100.0


def test_kl_to_teacher_is_zero_for_the_same_distribution_and_ignores_padding():
    import torch

    from resonance.train.distill import kl_to_teacher

    logits = torch.randn(2, 3, 10)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    assert kl_to_teacher(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    other = logits.clone()
    other[0, 2] += 5.0  # only a padded position differs
    assert kl_to_teacher(logits, other, labels).item() == pytest.approx(0.0, abs=1e-6)
    other[1, 0] += torch.randn(10)
    assert kl_to_teacher(logits, other, labels).item() > 0


def test_curve_rows_of_several_seeds_become_mean_and_sd():
    from resonance.train.curve import aggregate, render_markdown

    def row(size, seed, unseen, cer_after=0.2):
        return {
            "size": size,
            "seed": seed,
            "train_seconds": 100.0 + seed,
            "cer_before": 0.7,
            "cer_after": cer_after,
            "n_seen": 45,
            "n_unseen": 81,
            "generic_seen_char_acc": 0.2,
            "personal_seen_char_acc": 0.9,
            "generic_seen_exact": 0.1,
            "personal_seen_exact": 0.8,
            "generic_unseen_char_acc": 0.3,
            "personal_unseen_char_acc": unseen,
            "generic_unseen_exact": 0.1,
            "personal_unseen_exact": 0.4,
        }

    rows = [row(50, 0, 0.70), row(50, 1, 0.74), row(50, 2, 0.78), row(100, 0, 0.25, cer_after=0.8)]
    fifty, hundred = aggregate(rows)
    assert fifty["seeds"] == [0, 1, 2] and fifty["personal_unseen_char_acc"] == pytest.approx(0.74)
    assert fifty["personal_unseen_char_acc_sd"] == pytest.approx(0.04)
    assert fifty["worse_than_generic"] == 0 and hundred["worse_than_generic"] == 1
    assert hundred["personal_unseen_char_acc_sd"] is None  # one seed: no spread to show
    table = render_markdown(rows)
    assert "| 50 | 20 ± 0 % → **90 ± 0 %** (45)" in table and "**74 ± 4 %** (81)" in table
    assert "| 3 (0) |" in table and "| 1 (1) |" in table  # seeds, and how many lost to the generic model
    assert "101 s ± 1" in table
    single = render_markdown([row(30, 0, 0.69)])
    assert "**69 %** (81)" in single and "seeds" not in single  # one seed: the table as before


def test_curve_runs_each_size_and_seed_once_and_keeps_finished_runs(demo_data, tmp_path, monkeypatch):
    """--seeds N trains seeds seed..seed+N-1 per size; runs an interrupted curve already has are kept."""
    from resonance.train import trainer
    from resonance.train.curve import learning_curve, summarise

    trained, out = [], tmp_path / "curve"

    def fake_train(config, generic_cache):
        trained.append((config.max_train_samples, config.seed, config.out))
        utterance = {"reference": "我想喝水", "hypothesis": "我想喝水", "before": "我想"}
        return {
            "train_texts": ["我想喝水"],
            "utterances": [utterance],
            "train_seconds": 1.0,
            "samples_per_second": 1.0,
            "cer_before": 0.5,
            "cer_after": 0.0,
        }

    monkeypatch.setattr(trainer, "train", fake_train)
    base = TrainConfig(data=str(demo_data), eval_data="e", out=str(out), seed=5)
    kept = {"size": 5, "seed": 5, **summarise(fake_train(base, {})), "marker": True}
    trained.clear()
    rows = learning_curve(base, [5, 10], out, seeds=2, done=[kept])
    assert [(size, seed) for size, seed, _ in trained] == [(5, 6), (10, 5), (10, 6)]
    assert trained[0][2] == str(out / "adapter-5-seed6")
    assert rows[0] is kept and [(r["size"], r["seed"]) for r in rows] == [(5, 5), (5, 6), (10, 5), (10, 6)]
    assert json.loads((out / "curve.json").read_text())[0]["marker"] is True
    assert (out / "curve.md").is_file() and (out / "curve.png").is_file()


def test_curve_refuses_a_size_above_the_data_before_training(demo_data, tmp_path, monkeypatch):
    """The demo take has 26 recordings: a row "100" would be a run on 26 (less validation) under a false name."""
    from resonance.train import trainer
    from resonance.train.curve import learning_curve

    monkeypatch.setattr(trainer, "train", lambda *a: pytest.fail("trained before refusing the size"))
    base = TrainConfig(data=str(demo_data), eval_data="e", out=str(tmp_path / "c"))
    with pytest.raises(ResonanceError, match=r"--sizes 100: the data has only 26 recordings") as refused:
        learning_curve(base, [10, 100], tmp_path / "c")
    assert "use sizes up to 26" in refused.value.hint
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("keep, steps, kept_step", [("last", 8, 8), ("best", 6, 2)])
def test_keep_last_trains_every_step_and_keep_best_stops_early(
    tiny_whisper, demo_data, tmp_path, monkeypatch, keep, steps, kept_step
):
    """Validation is right at its first evaluation (step 2) and wrong after. --keep best (the rule before the
    recipe study) keeps step 2 and stops after --patience 2 evaluations without improvement; --keep last, the
    default, trains all 8 steps and keeps them: a few validation phrases are too noisy to pick a step."""
    from resonance.train import trainer

    decodes = []

    def validation_right_only_at_step_2(model, fe, tok, examples, *rest, **options):
        decodes.append(len(examples))
        first_validation = len(decodes) == 2  # decode 1 is the generic model's, before training
        return [e.text for e in examples] if first_validation else [""] * len(examples)

    monkeypatch.setattr(trainer, "_transcribe", validation_right_only_at_step_2)
    out = tmp_path / keep
    config = _tiny_config(tiny_whisper, demo_data, out, max_steps=8, evals_per_epoch=3.0, patience=2)
    assert TrainConfig().keep == "last"
    report = trainer.train(dataclasses.replace(config, keep=keep))
    assert report["keep"] == keep and report["steps"] == steps and report["best_step"] == kept_step
    # The technician's settings say the rule and the learning rate used (not "None" for a default).
    assert report["settings"]["keep"] == keep and report["settings"]["learning_rate"] == FULL_LEARNING_RATE
    assert [s for s, _ in report["history"]["val"]] == list(range(2, steps + 1, 2))
    # Validation picked the step only with --keep best: only then is measuring on it optimistic.
    assert ("optimistic" in report["eval_source"]) == (keep == "best")
    text = (out / "report.txt").read_text(encoding="utf-8")
    assert ("optimistic" in text) == (keep == "best")
    if keep == "last":
        assert f"kept the weights after the last step ({steps}) (validation CER there 1.000)" in text
    else:
        assert f"kept the weights of step 2 of {steps} (validation CER 0.000)" in text


def test_average_epochs_keeps_the_mean_of_the_last_epoch_ends(
    tiny_whisper, demo_data, tmp_path, monkeypatch, no_decoding
):
    """--average-epochs 2: the adapter holds the mean of the weights at the end of the last two epochs (the
    final weights among them), not the final weights alone; it is refused with --keep best or below 1."""
    import math

    import torch
    from safetensors.torch import load_file

    from resonance.train import trainer
    from resonance.train.adaptation import FULL_WEIGHTS

    averaged_at, added = [], []
    real_due, real_add = trainer.EpochAverage.due, trainer.EpochAverage.add

    def due(self, step):
        if real_due(self, step):
            averaged_at.append(step)
            return True
        return False

    def add(self, state):
        added.append({k: v.clone() for k, v in state.items()})
        real_add(self, state)

    monkeypatch.setattr(trainer.EpochAverage, "due", due)
    monkeypatch.setattr(trainer.EpochAverage, "add", add)
    out = tmp_path / "avg"
    config = _tiny_config(
        tiny_whisper, demo_data, out, finetune="full", adapt="encoder", learning_rate=1e-2, max_steps=None
    )
    report = trainer.train(dataclasses.replace(config, epochs=3.0, average_epochs=2))
    per_epoch = math.ceil(report["n_train"] / config.batch_size)
    assert report["steps"] == 3 * per_epoch and averaged_at == [2 * per_epoch, 3 * per_epoch]
    saved = load_file(str(out / FULL_WEIGHTS))
    final = added[-1]
    assert all(torch.allclose(saved[k], (added[0][k] + final[k]) / 2, atol=1e-6) for k in saved)
    assert any(not torch.equal(saved[k], final[k]) for k in saved)  # not the final weights alone
    assert json.loads((out / "train_config.json").read_text())["average_epochs"] == 2
    report_text = (out / "report.txt").read_text(encoding="utf-8")
    assert (
        f"kept the mean of the weights at the end of the last 2 epochs, up to the last step ({report['steps']})"
        in (report_text)
    )

    for bad in (dict(average_epochs=2, keep="best"), dict(average_epochs=0)):
        with pytest.raises(ResonanceError, match="average_epochs"):
            TrainConfig(data="d", out="o", **bad)
