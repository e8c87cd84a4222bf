"""The phrase board: recorded phrases (manifest) + the caregiver's edits (board.json), carried across bundles."""

from __future__ import annotations

import json
import shutil

import pytest

from resonance.errors import ResonanceError
from resonance.runtime.board import (
    ADDED,
    BOARD_FILE,
    RECORDED,
    Board,
    carry_board,
    edit_board,
    read_board,
)
from resonance.runtime.bundle import BundleError, load_manifest
from resonance.runtime.transcriber import Transcriber

RECORDED_PHRASES = ("我想喝水", "我饿了", "帮我开灯")


def test_edits_keep_recorded_and_added_apart():
    board = Board(RECORDED_PHRASES)
    board = board.edited(add=["我想回家", "我饿了"], remove=["帮我开灯"])
    assert board.to_json() == [
        {"text": "我想喝水", "source": RECORDED},
        {"text": "我饿了", "source": RECORDED},  # already recorded: adding it changes nothing
        {"text": "我想回家", "source": ADDED},
    ]
    assert board.added == ("我想回家",) and board.removed == ("帮我开灯",)
    # Putting a removed recorded phrase back makes it recorded again; removing an added one forgets it.
    board = board.edited(add=["帮我开灯"], remove=["我想回家"])
    assert board == Board(RECORDED_PHRASES)
    with pytest.raises(ResonanceError, match="not on the phrase board: 开门"):
        board.edited(remove=["开门"])


def test_edits_follow_a_new_bundles_recorded_phrases():
    board = Board(RECORDED_PHRASES).edited(add=["我想回家", "我冷"], remove=["我饿了"])
    moved = board.with_recorded(["我想喝水", "我饿了", "帮我开灯", "我想回家"])  # 我想回家 now recorded
    assert moved.to_json() == [
        {"text": "我想喝水", "source": RECORDED},
        {"text": "帮我开灯", "source": RECORDED},
        {"text": "我想回家", "source": RECORDED},
        {"text": "我冷", "source": ADDED},
    ]  # 我饿了 stays off: the caregiver took it off


def test_edit_board_writes_only_board_json(tiny_bundle, tmp_path):
    bundle = tmp_path / "p1"
    shutil.copytree(tiny_bundle, bundle)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    board = edit_board(bundle, add=["我想喝水", "帮我开灯"])
    assert board.texts == ("我想喝水", "帮我开灯")
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.name != BOARD_FILE} == before
    assert json.loads((bundle / BOARD_FILE).read_text(encoding="utf-8"))["added"] == ["我想喝水", "帮我开灯"]
    load_manifest(bundle, verify=True)  # still a valid bundle
    assert Transcriber(bundle, threads=1).board.texts == ("我想喝水", "帮我开灯")
    with pytest.raises(ResonanceError, match="at most"):
        edit_board(bundle, add=["我" * 500])  # checked against the tokenizer before anything is written
    assert read_board(bundle).texts == ("我想喝水", "帮我开灯")


def test_a_damaged_board_file_is_a_clear_error(tiny_bundle, tmp_path):
    bundle = tmp_path / "p1"
    shutil.copytree(tiny_bundle, bundle)
    for content, message in (
        ("{oops", "cannot be read"),
        ('{"format": "other"}', "not a phrase board file"),
        ('{"format": "resonance-board", "format_version": 9}', "newer than this runtime"),
        ('{"format": "resonance-board", "format_version": 1, "added": "我想喝水"}', "must be a list"),
    ):
        (bundle / BOARD_FILE).write_text(content, encoding="utf-8")
        with pytest.raises(BundleError, match=message):
            read_board(bundle)


def test_carry_board_moves_the_caregivers_edits_to_another_bundle(tiny_bundle, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(tiny_bundle, old)
    shutil.copytree(tiny_bundle, new)
    edit_board(old, add=["我想回家"])
    assert carry_board(old, new).texts == ("我想回家",)
    assert read_board(new).to_json() == [{"text": "我想回家", "source": ADDED}]


def test_calibration_fits_the_rejection_on_the_patients_recordings_by_folds_of_phrases(tiny_bundle, tmp_path):
    from helpers import DEMO_DATA

    from resonance.data.labels import load_labels
    from resonance.runtime.board_calibration import Heard, calibrate_board, fold_examples
    from resonance.runtime.bundle import update_manifest

    # Each recording appears once per fold; its phrase is left out of exactly one fold's list.
    heard = [Heard(p, p, {q: -float(q != p) for q in RECORDED_PHRASES}) for p in RECORDED_PHRASES]
    examples = fold_examples(heard, list(RECORDED_PHRASES), folds=3)
    assert len(examples) == 9 and sum(label == len(kept) for kept, _, label, _ in examples) == 3

    bundle = tmp_path / "p1"
    shutil.copytree(tiny_bundle, bundle)
    recordings = load_labels(DEMO_DATA / "take1")[:6]
    edit_board(bundle, add=[u.text for u in recordings])
    calibration = calibrate_board(bundle, recordings, threads=1)
    assert calibration["temperature"] > 0 and calibration["fitted_on"]["recordings"] == 6
    assert calibration["fitted_on"]["folds"] == 5
    update_manifest(bundle, phrase_calibration=calibration)
    transcriber = Transcriber(bundle, threads=1)  # "fitted_on" is not an option: the bundle still loads
    assert transcriber.phrase_options.temperature == calibration["temperature"]
    assert calibrate_board(bundle, recordings[:3], threads=1) == {}  # too few phrases: the defaults stay
