"""The paired bootstrap over phrases: an interval for the change in accuracy, decisive only with enough phrases."""

from __future__ import annotations

import pytest

from resonance.train.significance import (
    BETTER,
    INCONCLUSIVE,
    MIN_DECISIVE_PHRASES,
    WORSE,
    PhraseErrors,
    compare,
    phrase_errors,
)


def test_recordings_of_one_phrase_are_one_unit_and_errors_are_counted_like_cer():
    rows = phrase_errors(
        ["我想喝水", "我想喝水", "帮我开灯。"],
        ["我想喝水", "我想和水", "幫我開燈"],  # A: one substitution; Traditional script is no error
        ["我想喝水", "我想喝水", "帮我"],  # B: two deletions
    )
    assert rows == [PhraseErrors("我想喝水", 8, 1, 0), PhraseErrors("帮我开灯", 4, 0, 2)]


def test_three_phrases_that_all_improved_are_not_enough_to_decide():
    phrases = [PhraseErrors(f"p{i}", 4, 3, 0) for i in range(3)]
    found = compare(phrases)
    assert found.change == pytest.approx(0.75)
    assert found.low > 0  # the bootstrap alone would call it certain ...
    assert found.result == INCONCLUSIVE  # ... but 3 phrases cannot show it (sign-flip bound)


def test_a_clear_gain_or_loss_on_enough_phrases_is_decisive():
    gained = [PhraseErrors(f"p{i}", 4, 3 - i % 2, i % 2) for i in range(MIN_DECISIVE_PHRASES)]
    found = compare(gained)
    assert found.result == BETTER and found.low > 0 and found.low <= found.change <= found.high
    lost = [PhraseErrors(p.text, p.chars, p.errors_b, p.errors_a) for p in gained]
    assert compare(lost).result == WORSE
    assert compare(lost).change == pytest.approx(-found.change)


def test_mixed_results_are_inconclusive_and_the_interval_spans_zero():
    phrases = [PhraseErrors(f"p{i}", 4, 2 * (i % 2), 2 * ((i + 1) % 2)) for i in range(20)]
    found = compare(phrases)
    assert found.result == INCONCLUSIVE and found.low < 0 < found.high
    assert compare([]).result == INCONCLUSIVE
    assert compare(phrases, seed=1).to_json()["n_phrases"] == 20
