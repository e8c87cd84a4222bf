"""`resonance update`: warm start, the split of new recordings, the judge, the deploy or keep-aside, per phrase."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import DEMO_DATA

from resonance.errors import ResonanceError
from resonance.runtime.board import RECORDED, read_board
from resonance.runtime.bundle import load_manifest
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
    out = tmp_path_factory.mktemp("adapters") / "p1"
    _train(tiny_whisper, DEMO_DATA / "take1", out, max_steps=2)
    return out


def test_the_judge_counts_fixed_and_broken_and_deploys_only_when_not_worse():
    refs = ["我想喝水", "帮我开灯", "谢谢"]
    judged = judge_texts(refs, ["我想喝水", "帮我", "谢"], ["我想喝水", "帮我开灯", "谢谢"])
    assert [r["change"] for r in judged.rows] == [RIGHT, FIXED, FIXED]
    assert judged.deploy and judged.fixed == ["帮我开灯", "谢谢"] and judged.broken == []
    judged = judge_texts(refs, ["我想喝水", "帮我开灯", "谢"], ["我想喝", "帮我开灯", "谢谢"])
    assert [r["change"] for r in judged.rows] == [BROKEN, RIGHT, FIXED]
    assert judged.deploy  # one error each way: not worse, so the model that learnt more is deployed
    judged = judge_texts(refs, ["我想喝水", "帮我开灯", "谢谢"], ["我想喝", "帮我开灯", "谢谢"])
    assert not judged.deploy and judged.broken == ["我想喝水"]


def test_export_puts_every_recorded_phrase_on_the_board(first_adapter):
    report = json.loads((first_adapter / "report.json").read_text(encoding="utf-8"))
    take1 = [e["text"] for e in json.loads((DEMO_DATA / "take1" / "labels.json").read_text(encoding="utf-8"))]
    assert report["phrases"] == list(dict.fromkeys(take1))  # validation phrases included
    assert set(report["train_texts"]) < set(report["phrases"])

    from resonance.export.onnx_export import read_adapter

    assert read_adapter(first_adapter).phrases == report["phrases"]


def test_warm_start_begins_from_the_previous_adapter(tiny_whisper, first_adapter, tmp_path):
    from safetensors.torch import load_file

    previous = load_file(str(first_adapter / "adapter_model.safetensors"))
    # A learning rate too small to move anything: what is saved is what training started from.
    warm = _train(
        tiny_whisper,
        DEMO_DATA / "take1",
        tmp_path / "warm",
        max_steps=1,
        learning_rate=1e-12,
        init_adapter=str(first_adapter),
    )
    assert warm["steps"] == 1
    after = load_file(str(tmp_path / "warm" / "adapter_model.safetensors"))
    assert set(after) == set(previous)
    assert all(float((after[k] - previous[k]).abs().max()) < 1e-6 for k in previous)
    # LoRA starts with B = 0: a start from the base model could not have saved these.
    assert any(float(previous[k].abs().max()) > 1e-3 for k in previous if "lora_B" in k)

    with pytest.raises(ResonanceError, match="does not fit this recipe"):
        _train(
            tiny_whisper,
            DEMO_DATA / "take1",
            tmp_path / "other",
            max_steps=1,
            lora_r=4,
            init_adapter=str(first_adapter),
        )


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
    with pytest.raises(ResonanceError, match="already exists"):
        update(options)  # an adapter of the user's is never overwritten
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

    # Round 1 ran `resonance update`: 5 new recordings, 4 held out (the minimum), warm start, a judgement.
    from resonance.update.update import UPDATE_FILE

    round_1 = tmp_path / "loop" / "adapters" / "round-1"
    record = json.loads((round_1 / UPDATE_FILE).read_text(encoding="utf-8"))
    assert (
        len(record["held_out_new"]) == 2 and len(record["trained_new"]) == 3
    )  # never more than half held out
    assert not set(record["held_out_new"]) & set(record["trained_new"])
    assert record["start"] == "warm" and record["judgement"]["deploy"] == second["deployed"]
    made_with = json.loads((round_1 / "train_config.json").read_text(encoding="utf-8"))
    assert made_with["init_adapter"].endswith("round-0") and made_with["max_train_samples"] == 4
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
