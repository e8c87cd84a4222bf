"""The N recordings that hold the most syllables (train/coverage.py), training's `--pick sounds`."""

from __future__ import annotations

import pytest

from resonance.data.labels import Utterance
from resonance.errors import ResonanceError
from resonance.train.config import TrainConfig
from resonance.train.coverage import order_by_sounds, sounds
from resonance.train.data import training_subset


def test_sounds_are_toneless_syllables_and_words():
    assert sounds("我想喝水") == {"wo", "xiang", "he", "shui"}
    assert sounds("我想喝水。我想！") == {"wo", "xiang", "he", "shui"}  # punctuation and repeats add nothing
    assert sounds("打开 TV 的灯") == {"da", "kai", "tv", "de", "deng"}
    assert sounds("Open the door, please") == {"open", "the", "door", "please"}
    assert sounds("123 ...") == set()


def test_each_next_phrase_brings_the_most_new_syllables():
    phrases = ["我想喝水", "我想喝水了", "帮我开灯", "开灯", "关灯"]
    # 我想喝水了: 5 new; 帮我开灯: bang kai deng (wo known); 关灯: guan; 我想喝水 and 开灯: nothing new, as listed
    assert order_by_sounds(phrases) == ["我想喝水了", "帮我开灯", "关灯", "我想喝水", "开灯"]
    # a tie goes to the shorter phrase, then to the one listed first
    assert order_by_sounds(["他他他们", "你好"]) == ["你好", "他他他们"]  # 2 new syllables each
    assert order_by_sounds(["我要上厕所", "他们", "你好"]) == ["我要上厕所", "他们", "你好"]


def _utterances(texts):
    return [Utterance(audio=f"/x/{i}.wav", text=t, rel=f"audio/{i}.wav") for i, t in enumerate(texts)]


def test_training_subset_first_or_most_sounds_in_listed_order():
    utts = _utterances(["我想喝水", "我想喝水", "帮我开一下灯", "我饿了", "外面下雨了吗"])
    assert training_subset(utts, None, "sounds") == utts
    assert training_subset(utts, 9, "sounds") == utts
    assert training_subset(utts, 2, "first") == utts[:2]
    # sounds: 外面下雨了吗 (6 syllables), then 帮我开一下灯 (5 new: xia is covered); in the listed order
    assert [u.text for u in training_subset(utts, 2, "sounds")] == ["帮我开一下灯", "外面下雨了吗"]
    with pytest.raises(ResonanceError, match="pick"):
        TrainConfig(data="d", out="o", pick="random")
