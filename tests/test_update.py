"""`resonance update`: warm start, the split of new recordings, the judge, the deploy or keep-aside, per phrase."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from helpers import DEMO_DATA, write_config

from resonance.errors import ResonanceError
from resonance.runtime.board import RECORDED, read_board
from resonance.runtime.bundle import load_manifest
from resonance.runtime.decoding import DecodingOptions
from resonance.runtime.versions import NOT_DEPLOYED, REPLACED, versions
from resonance.update.judge import BROKEN, FIXED, RIGHT, judge_texts

TINY = {"batch_size": 4, "window_seconds": 5.0, "threads": 2}


def _train(tiny_whisper, data, out, **changes):
    from resonance.train.config import TrainConfig
    from resonance.train.trainer import train

    config = TrainConfig(data=str(data), out=str(out), base_model=str(tiny_whisper), **{**TINY, **changes})
    return train(config)


@pytest.fixture(scope="module")
def first_adapter(tiny_whisper, tmp_path_factory) -> Path:
    """The default recipe: the encoder fully fine-tuned."""
    out = tmp_path_factory.mktemp("adapters") / "p1"
    _train(tiny_whisper, DEMO_DATA / "take1", out, max_steps=2)
    return out


@pytest.fixture(scope="module")
def lora_adapter(tiny_whisper, tmp_path_factory) -> Path:
    """The recipe before the study: LoRA on encoder and decoder."""
    from resonance.train.config import LORA_RECIPE

    out = tmp_path_factory.mktemp("adapters") / "p1-lora"
    _train(tiny_whisper, DEMO_DATA / "take1", out, max_steps=2, **LORA_RECIPE)
    return out


def test_the_judge_counts_fixed_and_broken_and_deploys_unless_there_is_evidence_of_a_loss():
    refs = ["我想喝水", "帮我开灯", "谢谢"]
    judged = judge_texts(refs, ["我想喝水", "帮我", "谢"], ["我想喝水", "帮我开灯", "谢谢"])
    assert [r["change"] for r in judged.rows] == [RIGHT, FIXED, FIXED]
    assert judged.deploy and judged.fixed == ["帮我开灯", "谢谢"] and judged.broken == []
    judged = judge_texts(refs, ["我想喝水", "帮我开灯", "谢"], ["我想喝", "帮我开灯", "谢谢"])
    assert [r["change"] for r in judged.rows] == [BROKEN, RIGHT, FIXED]
    assert judged.deploy  # one error each way: not worse, so the model that learnt more is deployed
    # A served model that hears all of them right: one slipped character on one recording is not a loss.
    judged = judge_texts(refs, ["我想喝水", "帮我开灯", "谢谢"], ["我想喝", "帮我开灯", "谢谢"])
    assert judged.deploy and judged.broken == ["我想喝水"] and "slip" in judged.reason
    # Two recordings worse and none better is a pattern: kept aside.
    judged = judge_texts(refs, ["我想喝水", "帮我开灯", "谢谢"], ["我想喝", "帮我开", "谢谢"])
    assert not judged.deploy and judged.broken == ["我想喝水", "帮我开灯"]
    assert "2 more held-out recordings" in judged.reason
    # ... unless it is better on another one: worse on one more than better, more errors in all, deployed.
    refs4 = [*refs, "我要上厕所"]
    judged = judge_texts(refs4, [*refs, "我要上厕"], ["我想", "帮我", "谢谢", "我要上厕所"])
    assert judged.deploy and "slip" in judged.reason and judged.fixed == ["我要上厕所"]
    assert not judge_texts([], [], []).deploy  # nothing to judge on: nothing deployed


def test_update_txt_counts_every_change_with_the_words_of_its_table():
    """The summary counted a "closer" recording as "still wrong" while the table beside it said "closer"."""
    from pathlib import Path

    from resonance.update.judge import CHANGES
    from resonance.update.update import UpdateResult, render_text

    refs = ["我想喝水", "帮我开灯", "谢谢", "我饿了"]
    judged = judge_texts(
        refs, ["我想喝水", "帮我", "谢", "我给我来"], ["我想喝水", "帮我开灯", "谢", "我问了"]
    )
    text = render_text(UpdateResult(Path("a"), Path("b"), True, None, judged, 10, 5, 4, 90.0))
    assert "fixed 1, broken 0, closer 1, further 0, right 1, same 1" in text
    table = [line for line in text.splitlines() if line.count(" | ") == 3 and "served model" not in line]
    assert sorted(line.rsplit(" | ", 1)[1] for line in table) == ["closer", "fixed", "right", "same"]
    assert all(f"{change}: {meaning}" in text for change, meaning in CHANGES.items())  # each word explained


def test_a_significant_loss_blocks_even_when_it_is_spread_evenly():
    from resonance.train.significance import WORSE

    # Eight phrases, each one character worse on the candidate, each better on none: significant.
    refs = ["我想喝水", "帮我开灯", "谢谢你", "我要上厕所", "我饿了", "我想睡觉", "好冷啊", "不要走"]
    judged = judge_texts(refs, refs, [r[:-1] for r in refs])
    assert judged.comparison.result == WORSE and not judged.deploy
    assert judged.reason.startswith("significantly worse")


def test_the_candidate_is_parity_checked_on_the_held_out_recordings_with_their_labels(monkeypatch, tmp_path):
    # Unlabelled, int8 had to repeat PyTorch's text on a handful of clips (greedy paths part where a logit flips:
    # speaker A's loop stopped at round 4 on 2 of 7 clips); labelled, it may not lose accuracy against them.
    from types import SimpleNamespace

    import resonance.export.onnx_export as onnx_export
    from resonance.data.labels import load_labels
    from resonance.export.parity import load_clips
    from resonance.update.update import UpdateOptions, _export_candidate

    seen = {}
    monkeypatch.setattr(onnx_export, "export_bundle", lambda *a, **kw: seen.update(kw))
    held_out = load_labels(DEMO_DATA / "take2")[:3]
    manifest = SimpleNamespace(precision="int8", quantization={}, audio=SimpleNamespace(dynamic_window=False))
    options = UpdateOptions(
        adapter=tmp_path / "a", data=None, new=tmp_path / "new", out=tmp_path / "a2", bundle=tmp_path / "b"
    )
    _export_candidate(options, tmp_path / "b", manifest, held_out)
    clips, described = load_clips(seen["parity_clips"])
    assert [c.text for c in clips] == [u.text for u in held_out]
    assert "3 of 3 labelled clips" in described


def test_export_puts_every_recorded_phrase_on_the_board(first_adapter):
    report = json.loads((first_adapter / "report.json").read_text(encoding="utf-8"))
    take1 = [e["text"] for e in json.loads((DEMO_DATA / "take1" / "labels.json").read_text(encoding="utf-8"))]
    assert report["phrases"] == list(dict.fromkeys(take1))  # validation phrases included
    assert set(report["train_texts"]) < set(report["phrases"])

    from resonance.export.onnx_export import read_adapter

    assert read_adapter(first_adapter).phrases == report["phrases"]


def test_the_judge_decodes_as_the_device_serving_the_bundle(monkeypatch, tmp_path, tiny_bundle):
    """A device whose config decodes greedily must be judged greedily, not with the runtime's default 4 beams:
    `update --config` (and `--beam-size`) reach the Transcribers the judge makes."""
    from resonance.cli import main
    from resonance.data.labels import load_labels
    from resonance.runtime import transcriber as transcriber_module
    from resonance.update import update as update_module
    from resonance.update.judge import judge_bundles

    class Stop(Exception):
        pass

    def capture(options, progress=print):
        seen.append(options.decoding.beam_size)
        raise Stop

    seen: list = []
    monkeypatch.setattr(update_module, "update", capture)
    greedy_box = write_config(tmp_path / "box.yaml")  # decoding: {beam_size: 1}
    common = ["update", "--adapter", "a", "--new", "n", "--bundle", "b", "--out", "o"]
    for extra in ([], ["--config", str(greedy_box)], ["--config", str(greedy_box), "--beam-size", "3"]):
        with pytest.raises(Stop):
            main([*common, *extra])
    assert seen == [4, 1, 3]  # pc-cpu's default, the box's greedy, the command line's choice
    # the new adapter's report (report.txt, the bundle's metrics) decodes as the judge does
    from resonance.update.update import UpdateOptions, training_config

    paths = dict(
        adapter=tmp_path / "a", data=None, new=tmp_path / "n", out=tmp_path / "o", bundle=tmp_path / "b"
    )
    for decoding, beams in ((None, DecodingOptions().beam_size), (DecodingOptions(beam_size=1), 1)):
        config = training_config(UpdateOptions(**paths, decoding=decoding), {}, None)
        assert config.eval_beams == beams

    made = []

    class Recorded(transcriber_module.Transcriber):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self.options.beam_size)

    monkeypatch.setattr(transcriber_module, "Transcriber", Recorded)
    held_out = load_labels(DEMO_DATA / "take2")[:2]
    judged = judge_bundles(
        tiny_bundle, tiny_bundle, held_out, threads=1, decoding=DecodingOptions(beam_size=1)
    )
    assert made == [1, 1] and judged.deploy  # the same bundle twice: no loss
    judge_bundles(tiny_bundle, tiny_bundle, held_out[:1], threads=1)
    assert made[2:] == [DecodingOptions().beam_size] * 2  # no config: the runtime's default


def _warm_start(tiny_whisper, adapter, out, **changes) -> dict:
    """One step from ``adapter`` at a learning rate too small to move anything: what is saved is what training
    started from."""
    return _train(
        tiny_whisper,
        DEMO_DATA / "take1",
        out,
        **{"max_steps": 1, "learning_rate": 1e-12, "init_adapter": str(adapter), **changes},
    )


def _same_tensors(before: dict, after: dict) -> bool:
    return set(after) == set(before) and all(float((after[k] - before[k]).abs().max()) < 1e-6 for k in before)


def test_warm_start_begins_from_the_previous_adapter(tiny_whisper, first_adapter, tmp_path):
    from safetensors.torch import load_file
    from transformers import WhisperForConditionalGeneration

    from resonance.train.adaptation import FULL_WEIGHTS

    previous = load_file(str(first_adapter / FULL_WEIGHTS))
    assert _warm_start(tiny_whisper, first_adapter, tmp_path / "warm")["steps"] == 1
    assert _same_tensors(previous, load_file(str(tmp_path / "warm" / FULL_WEIGHTS)))
    # Trained away from the base: a start from the base model could not have saved these.
    base = dict(WhisperForConditionalGeneration.from_pretrained(tiny_whisper).named_parameters())
    assert max(float((previous[k] - base[k].detach()).abs().max()) for k in previous) > 1e-5

    with pytest.raises(ResonanceError, match="holds a full fine-tune, not a LoRA adapter"):
        _warm_start(tiny_whisper, first_adapter, tmp_path / "other", finetune="lora", adapt="both")


def test_warm_start_from_a_lora_adapter(tiny_whisper, lora_adapter, tmp_path):
    from safetensors.torch import load_file

    from resonance.train.config import LORA_RECIPE

    previous = load_file(str(lora_adapter / "adapter_model.safetensors"))
    _warm_start(tiny_whisper, lora_adapter, tmp_path / "warm", **LORA_RECIPE)
    assert _same_tensors(previous, load_file(str(tmp_path / "warm" / "adapter_model.safetensors")))
    # LoRA starts with B = 0: a start from the base model could not have saved these.
    assert any(float(previous[k].abs().max()) > 1e-3 for k in previous if "lora_B" in k)

    with pytest.raises(ResonanceError, match="does not fit this recipe"):
        _warm_start(tiny_whisper, lora_adapter, tmp_path / "other", lora_r=4, **LORA_RECIPE)
    with pytest.raises(ResonanceError, match="is a LoRA adapter, not a full fine-tune"):
        _warm_start(tiny_whisper, lora_adapter, tmp_path / "full")  # today's default recipe


def test_update_of_an_adapter_from_before_the_recipe_options_keeps_its_lora_recipe(
    tiny_whisper, lora_adapter, tmp_path
):
    """An adapter trained before --finetune/--adapt existed (LoRA on encoder and decoder; its
    train_config.json has neither key) is updated with its own recipe, warm-started from its LoRA weights,
    not with today's default (which could not even load them)."""
    from safetensors.torch import load_file

    from resonance.train.trainer import train
    from resonance.update.starts import WARM
    from resonance.update.update import WARM_EPOCHS, UpdateOptions, training_config

    old = tmp_path / "old"
    shutil.copytree(lora_adapter, old)
    made_with = json.loads((old / "train_config.json").read_text(encoding="utf-8"))
    made_with = {k: v for k, v in made_with.items() if k not in ("finetune", "adapt", "decoder_lora_r")}
    (old / "train_config.json").write_text(json.dumps(made_with), encoding="utf-8")

    options = UpdateOptions(
        adapter=old,
        data=DEMO_DATA / "take1",
        new=DEMO_DATA / "take2",
        out=tmp_path / "new",
        bundle=tmp_path,
        start=WARM,
    )
    config = training_config(options, made_with, first_n=None)
    assert (config.finetune, config.adapt, config.peak_learning_rate) == ("lora", "both", 5e-4)
    assert config.init_adapter == str(old) and config.epochs == WARM_EPOCHS and config.lora_r == 16

    previous = load_file(str(old / "adapter_model.safetensors"))
    train(dataclasses.replace(config, max_steps=1, learning_rate=1e-12))
    assert _same_tensors(previous, load_file(str(tmp_path / "new" / "adapter_model.safetensors")))
    saved = json.loads((tmp_path / "new" / "train_config.json").read_text(encoding="utf-8"))
    assert (saved["finetune"], saved["adapt"]) == ("lora", "both")  # written out now: no guessing next time


def _collected(tmp_path, n) -> Path:
    """A folder like `serve --collect` writes: DIR/<patient>/audio/NNNN_<text>.wav + labels.json."""
    folder = tmp_path / "collected" / "p1"
    (folder / "audio").mkdir(parents=True)
    take2 = json.loads((DEMO_DATA / "take2" / "labels.json").read_text(encoding="utf-8"))[:n]
    labels = []
    for i, entry in enumerate(take2):
        rel = f"audio/{i:04d}_{entry['text']}.wav"
        shutil.copyfile(DEMO_DATA / "take2" / entry["audio"], folder / rel)
        labels.append({"audio": rel, "text": entry["text"]})
    (folder / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    return folder


def test_update_names_the_patient_folders_when_new_is_the_collect_root(tmp_path, capsys):
    from resonance.cli import main

    collect_root = _collected(tmp_path, 2).parent  # DIR of `serve --collect DIR`, not DIR/<patient>
    args = ["update", "--adapter", str(tmp_path / "adapter"), "--new", str(collect_root)]
    assert main([*args, "--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "holds data folders (p1), each with a labels.json of its own" in error
    assert f"pass one of them, e.g. --new {collect_root / 'p1'}" in error
    assert "data convert" not in error  # not sent to make a labels.json the collect root should not have


def test_update_refuses_before_any_training(first_adapter, tiny_bundle, tmp_path):
    from resonance.update.update import UpdateOptions, update

    served = tmp_path / "bundles" / "p1"
    shutil.copytree(tiny_bundle, served)
    options = UpdateOptions(
        adapter=first_adapter,
        data=DEMO_DATA / "take1",
        new=_collected(tmp_path, 3),
        out=tmp_path / "p1-2",
        bundle=served,
    )
    with pytest.raises(ResonanceError, match="only 3 recording"):
        update(options)  # nothing worth an update, and nothing to judge on
    (tmp_path / "p1-2").mkdir()
    (tmp_path / "p1-2" / "adapter_config.json").write_text("{}")
    with pytest.raises(ResonanceError, match="already exists") as refused:
        update(options)  # an adapter of the user's is never overwritten
    assert "--force" not in refused.value.hint  # update has no --force to offer
    with pytest.raises(ResonanceError, match="--held-out"):
        UpdateOptions(first_adapter, DEMO_DATA, DEMO_DATA, tmp_path, served, held_out=1.0)


def test_the_loop_simulation_runs_rounds_and_continues_where_it_stopped(tiny_whisper, tmp_path):
    from resonance.update.loop import LoopOptions, run_loop

    options = LoopOptions(
        first=DEMO_DATA / "take1",
        second=DEMO_DATA / "take2",
        out=tmp_path / "loop",
        base_model=str(tiny_whisper),
        initial=4,
        per_round=5,
        rounds=1,
        quantize="none",
        threads=2,
        epochs=1.0,  # the plumbing is under test here, not the learning (README: the real run)
    )
    rows = run_loop(options, progress=lambda line: None)
    assert [r["round"] for r in rows] == [0, 1]
    first, second = rows
    assert first["served"]["n_used"] == 4 and first["served"]["n_unheard"] == 22
    assert second["served"]["n_used"] == 9 and second["served"]["n_unheard"] == 17
    assert isinstance(second["deployed"], bool) and second["versus_previous"]["n_phrases"] == 9
    if not second["deployed"]:
        assert second["served"] == second["previous"]
    collected = json.loads((tmp_path / "loop" / "collected" / "speaker" / "labels.json").read_text())
    take2 = json.loads((DEMO_DATA / "take2" / "labels.json").read_text())
    assert [e["text"] for e in collected] == [e["text"] for e in take2[4:9]]  # phrases not used before
    table = (tmp_path / "loop" / "loop.md").read_text(encoding="utf-8")
    assert table.count("\n") == 4 and "| 1 |" in table

    # Round 1 ran `resonance update`: 5 new recordings, 4 held out (the minimum), the default start, a judgement.
    from resonance.update.update import UPDATE_FILE

    round_1 = tmp_path / "loop" / "adapters" / "round-1"
    record = json.loads((round_1 / UPDATE_FILE).read_text(encoding="utf-8"))
    assert (
        len(record["held_out_new"]) == 2 and len(record["trained_new"]) == 3
    )  # never more than half held out
    assert not set(record["held_out_new"]) & set(record["trained_new"])
    assert record["start"] == "scratch" and record["judgement"]["deploy"] == second["deployed"]
    made_with = json.loads((round_1 / "train_config.json").read_text(encoding="utf-8"))
    assert made_with["init_adapter"] is None and made_with["max_train_samples"] == 4  # from the base model
    served = tmp_path / "loop" / "bundles" / "speaker"
    kinds = [v.kind for v in versions(served)]
    update_text = (round_1 / "update.txt").read_text(encoding="utf-8")
    if second["deployed"]:  # a random model: either outcome, each checked for what it must leave behind
        assert kinds == [REPLACED] and "DEPLOYED" in update_text
        # Every phrase the patient recorded is on the new board, the held-out ones too.
        assert set(read_board(served).texts) == {e["text"] for e in take2[:9]}
        assert all(p.source == RECORDED for p in read_board(served).phrases)
    else:
        assert kinds == [NOT_DEPLOYED] and "NOT deployed" in update_text
    assert "fitted_on" in load_manifest(served).phrase_calibration  # export calibrated the board

    # A second run finds both rounds done and trains nothing.
    assert (
        run_loop(options, progress=lambda line: None)
        == json.loads((tmp_path / "loop" / "loop.json").read_text())["rows"]
    )
