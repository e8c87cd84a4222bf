"""The auxiliary CTC loss on Mandarin initials and finals (train/phones.py, `--phone-ctc-weight`)."""

from __future__ import annotations

import pytest
from test_recipe import _tiny_config, no_decoding  # noqa: F401 (a fixture)

from resonance.errors import ResonanceError
from resonance.train.config import TrainConfig
from resonance.train.coverage import pinyin_parts


def test_pinyin_parts_are_initials_then_finals_in_order():
    assert pinyin_parts("我想躺下") == ["w", "o", "x", "iang", "t", "ang", "x", "ia"]
    assert pinyin_parts("饿了!") == ["e", "l", "e"]  # no initial: the final alone; punctuation ignored
    assert pinyin_parts("OK") == []


def test_the_phone_head_learns_to_spell_the_units():
    torch = pytest.importorskip("torch")
    from resonance.train.phones import PhoneCTC

    torch.manual_seed(0)
    head = PhoneCTC(8, ["我想喝水", "帮我开灯"], "cpu")
    assert len(head.index) == len(
        {"w", "o", "x", "iang", "h", "e", "sh", "ui", "b", "ang", "k", "ai", "d", "eng"}
    )
    hidden = torch.randn(2, 50, 8)
    optimizer = torch.optim.Adam(head.proj.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = head.loss(hidden, ["我想喝水", "帮我开灯"], [1.0, 0.2])  # 0.2 s: 10 frames for 8 units
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] / 2


def test_phone_loss_needs_a_trained_encoder():
    with pytest.raises(ResonanceError, match="phone_ctc_weight"):
        TrainConfig(data="d", out="o", adapt="decoder", finetune="lora", phone_ctc_weight=0.3)
    with pytest.raises(ResonanceError, match="phone_ctc_weight"):
        TrainConfig(data="d", out="o", phone_ctc_weight=-1.0)


@pytest.mark.usefixtures("no_decoding")
def test_training_with_the_phone_loss_changes_the_encoder_only(tiny_whisper, demo_data, tmp_path):
    import json

    from safetensors.torch import load_file

    from resonance.train.trainer import train

    runs = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"w{weight}"
        train(_tiny_config(tiny_whisper, demo_data, out, learning_rate=1e-2, phone_ctc_weight=weight))
        runs[weight] = load_file(out / "finetuned_weights.safetensors")
        assert json.loads((out / "train_config.json").read_text())["phone_ctc_weight"] == weight
    assert runs[0.0].keys() == runs[1.0].keys()  # the head is not saved: the adapter holds the encoder alone
    assert any(not (runs[0.0][k] == runs[1.0][k]).all() for k in runs[0.0])  # the loss moved the encoder
