"""Phrase-board mode: batched teacher-forced scoring, calibration, modes, the phrase list CLI, the server field."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import DEMO_DATA, tone, wav, write_config

from resonance.errors import ResonanceError
from resonance.runtime.board import BOARD_FILE
from resonance.runtime.bundle import load_manifest
from resonance.runtime.merged_decoder import NumpyStepRunner
from resonance.runtime.phrases import (
    MATCHED,
    NO_PHRASES,
    NONE_OF_THESE,
    PhraseOptions,
    PhraseSet,
    broadcast_works,
    calibrate,
    decide,
    length_groups,
    log_softmax,
    shortlist,
    teacher_forced_logprobs,
)
from resonance.runtime.phrases_eval import fit_calibration
from resonance.runtime.transcriber import Transcriber

PHRASES = ["我想喝水", "我饿了", "帮我开灯", "帮我关灯", "我要上厕所", "谢谢", "我想出去走走", "不要"]
# Accept whatever scores best: the tiny model has random weights, so its scores say nothing about the audio.
ALWAYS_ACCEPT = {"none_score": -1e6, "max_none": 1.0, "max_distance": None}  # no veto either


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    """conftest's tiny bundle with a phrase list (a copy: the shared one stays as exported)."""
    from resonance.runtime.board import edit_board

    copy = tmp_path_factory.mktemp("phrases") / "p1"
    shutil.copytree(tiny_bundle, copy)
    edit_board(copy, add=PHRASES)
    return copy


@pytest.fixture(scope="module")
def transcriber(bundle) -> Transcriber:
    return Transcriber(bundle, threads=1)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (tone(1.5, freq=300.0) + 0.05 * rng.standard_normal(24000)).astype(np.float32)


def step_by_step_logprobs(transcriber: Transcriber, hidden, tokens) -> np.ndarray:
    """The reference: log p of each token and then eot, one token at a time as greedy decoding feeds them."""
    graph = transcriber.merged_decoder
    runner = NumpyStepRunner(transcriber.decoder)
    logits, presents = graph.prime(hidden, runner)
    cross = {k: v for k, v in presents.items() if ".encoder." in k}
    out = []
    for token in [*tokens, graph.tokens.eot]:
        out.append(log_softmax(logits[0, -1])[token])
        if token == graph.tokens.eot:
            break
        feeds = {k: v for k, v in presents.items() if ".encoder." not in k}
        feeds.update(cross)
        feeds.update(
            input_ids=np.asarray([[token]], dtype=np.int64),
            encoder_hidden_states=hidden,
            use_cache_branch=np.asarray([True]),
        )
        logits, presents = runner.step(feeds, graph.present_to_past)
    return np.asarray(out)


def test_batched_teacher_forcing_equals_step_by_step_decoding(transcriber, audio):
    hidden = transcriber._encode(transcriber.features(audio))
    phrases = transcriber.phrase_set()
    lengths = {len(t) for t in phrases.tokens}
    assert len(lengths) > 2  # different lengths in one batch: padding is exercised
    runner = NumpyStepRunner(transcriber.decoder)
    primed = transcriber.merged_decoder.prime(hidden, runner)
    row_mb = sum(v.nbytes for v in primed[1].values()) / 1e6
    assert broadcast_works(transcriber.merged_decoder, primed, hidden, runner)
    # One batch for all, batches of 2 (memory cap), and the cross-attention cache broadcast or copied per row.
    for memory_mb, broadcast in ((1000.0, True), (1000.0, False), (2.5 * row_mb, False)):
        batched = teacher_forced_logprobs(
            transcriber.merged_decoder, primed, phrases.tokens, hidden, runner, memory_mb, broadcast
        )
        assert len(batched) == len(phrases)
        for tokens, got in zip(phrases.tokens, batched):
            expected = step_by_step_logprobs(transcriber, hidden, tokens)
            assert got.shape == (len(tokens) + 1,)
            np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)
            assert np.all(got <= 0)


def test_candidates_are_sorted_with_confidences_summing_to_at_most_one(transcriber, audio):
    found = transcriber.match_phrases(audio, top_k=len(PHRASES))
    scores = [c.score for c in found.candidates]
    assert scores == sorted(scores, reverse=True)
    assert {c.text for c in found.candidates} == set(
        PHRASES
    )  # 8 short phrases fit the row budget: all scored
    confidences = np.asarray([c.confidence for c in found.candidates])
    assert np.all((confidences >= 0) & (confidences <= 1))
    assert confidences.sum() <= 1 + 1e-9
    assert confidences.sum() + found.none_confidence == pytest.approx(1.0)
    assert list(confidences) == sorted(confidences, reverse=True)
    assert found.scored == found.total == len(PHRASES)
    assert len(transcriber.match_phrases(audio, top_k=2).candidates) == 2


def test_none_of_these_below_the_threshold_and_a_match_above(transcriber, audio):
    strict = transcriber.transcribe(audio, mode="phrases", phrase_options={"none_score": 0.0})
    assert strict.phrases.rejected and strict.phrases.reason == NONE_OF_THESE
    assert strict.phrases.best is None and strict.text == ""  # mode=phrases: the text is the accepted phrase
    accept = transcriber.transcribe(audio, mode="phrases", phrase_options=ALWAYS_ACCEPT)
    assert not accept.phrases.rejected and accept.phrases.reason == MATCHED
    assert accept.text == accept.phrases.best == accept.phrases.candidates[0].text
    assert accept.tokens == ()  # the list fits the row budget: no free decoding was needed


def test_both_keeps_the_free_transcription_unchanged(transcriber, audio):
    free = transcriber.transcribe(audio, mode="free")
    both = transcriber.transcribe(audio, mode="both", phrase_options=ALWAYS_ACCEPT)
    assert free.phrases is None and free.mode == "free"
    assert both.text == free.text and both.tokens == free.tokens
    assert both.phrases.best in PHRASES
    assert both.timings["phrases_ms"] > 0


def test_the_plan_decodes_only_what_the_mode_needs(transcriber):
    from resonance.runtime.transcriber import Plan

    phrases = transcriber.phrase_set()
    fits = PhraseOptions(max_rows=None, max_distance=None)  # scores alone decide
    too_long = PhraseOptions(max_rows=1, max_distance=None)
    free = Plan.build("free", None, fits)
    assert free.free_text and free.phrases is None and free.runs_window(3) and free.decodes_window(3)
    both = Plan.build("both", phrases, too_long)
    assert both.free_text and both.runs_window(3) and both.phrases_for_window(0) is phrases
    assert both.phrases_for_window(1) is None  # phrases are matched on the first window only
    whole = Plan.build("phrases", phrases, fits)  # the list is scored whole: no free decoding at all
    assert not whole.free_text and not whole.decodes_window(0) and not whole.runs_window(1)
    ranked = Plan.build("phrases", phrases, too_long)  # the first window's free text ranks the shortlist
    assert ranked.decodes_window(0) and not ranked.decodes_window(1) and not ranked.runs_window(1)
    witness = Plan.build("phrases", phrases, PhraseOptions(max_rows=None))  # ... or checks the best phrase
    assert witness.decodes_window(0) and not witness.decodes_window(1) and not witness.free_text
    no_list = Plan.build("phrases", transcriber.phrase_set([]), fits)  # falls back to the free transcription
    assert no_list.free_text and no_list.phrases is None
    assert no_list.phrase_result(None).reason == NO_PHRASES
    assert whole.phrase_result(None).reason == "no_speech"  # no window ran the model (silence, no audio)


def test_mode_phrases_reports_the_models_no_speech_probability(transcriber, audio):
    free = transcriber.transcribe(audio, mode="free")
    phrases = transcriber.transcribe(audio, mode="phrases")
    assert phrases.tokens == () and phrases.timings["decoder_ms"] > 0  # the list fits: no free decoding
    assert phrases.no_speech_prob == pytest.approx(free.no_speech_prob)  # the model ran, so it is known


def test_an_explicit_list_overrides_the_bundles(transcriber, audio):
    found = transcriber.match_phrases(audio, phrases=["开门", " 开门 ", "关门", ""], top_k=5)
    assert sorted(c.text for c in found.candidates) == ["关门", "开门"]  # stripped, deduplicated, no blanks


def test_empty_phrase_list_means_free_transcription_with_a_clear_reason(tiny_bundle, audio):
    transcriber = Transcriber(tiny_bundle, threads=1)
    assert transcriber.manifest.phrases == []
    free = transcriber.transcribe(audio, mode="free")
    for mode in ("phrases", "both"):
        result = transcriber.transcribe(audio, mode=mode)
        assert result.text == free.text  # falls back to the free transcription
        assert result.phrases.reason == NO_PHRASES and result.phrases.rejected
        assert result.phrases.to_json()["phrases"] == []
    with pytest.raises(ResonanceError, match="unknown mode"):
        transcriber.transcribe(audio, mode="phrase")


def test_digital_silence_is_no_speech_not_a_phrase(transcriber):
    result = transcriber.transcribe(np.zeros(16000, np.float32), mode="both")
    assert result.text == "" and result.phrases.rejected and result.phrases.reason == "no_speech"


def test_shortlist_keeps_the_phrases_nearest_the_free_text_within_the_row_budget(transcriber):
    phrases = transcriber.phrase_set()
    first = np.zeros(len(phrases))
    everything = shortlist(phrases, "whatever", first, max_rows=None)
    assert everything == list(range(len(phrases)))
    budget = phrases.rows([phrases.texts.index("帮我关灯"), phrases.texts.index("帮我开灯")])
    chosen = shortlist(phrases, "帮我关灯。", first, max_rows=budget)
    assert [phrases.texts[i] for i in chosen] == ["帮我关灯", "帮我开灯"]  # exact, then one character off
    assert phrases.rows(chosen) <= budget
    assert len(shortlist(phrases, "", first, max_rows=1)) == 1  # always at least one candidate


def test_too_long_or_empty_lists_are_handled(transcriber):
    with pytest.raises(ResonanceError, match="tokens long"):
        PhraseSet.build(["我" * 300], transcriber.tokenizer, 100)
    assert len(PhraseSet.build(["", "  "], transcriber.tokenizer, 100)) == 0


def test_length_groups_cover_every_candidate_once_within_the_batch_limit():
    lengths = [3, 3, 4, 5, 9, 10, 2, 2, 2, 3, 7, 1]
    for max_batch in (1, 3, 100):
        groups = length_groups(lengths, max_batch)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert all(len(g) <= max_batch for g in groups)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in length_groups(lengths, 100))
    assert padded < len(lengths) * max(lengths)  # grouping saves padded positions


def test_calibration_softmax_and_decision():
    options = PhraseOptions(temperature=0.5, none_score=-1.0, max_none=0.2)
    confidence, none = calibrate(np.asarray([-0.1, -2.0]), options)
    assert confidence[0] > 0.5 > none and confidence.sum() + none == pytest.approx(1.0)
    assert not decide(["a", "b"], np.asarray([-0.1, -2.0]), options, 2).rejected
    far = decide(["a", "b"], np.asarray([-3.0, -3.1]), options, 2)
    assert far.rejected and far.best is None and far.candidates[0].text == "a"
    # Two alike phrases share the probability: the best is kept although its own confidence is below 0.5.
    alike = decide(["a", "b"], np.asarray([-0.10, -0.15]), options, 2)
    assert alike.candidates[0].confidence < 0.5 and not alike.rejected and alike.best == "a"


def test_the_free_transcription_can_veto_the_best_phrase():
    options = PhraseOptions(temperature=0.5, none_score=-5.0, max_none=0.2)  # max_distance 1/3
    sure = np.asarray([-0.5, -3.0])
    # An unknown request heard right as free text (我想回家) is not forced onto the nearest listed phrase.
    vetoed = decide(["我想咳嗽", "我饿了"], sure, options, 2, free_text="我想回家")
    assert vetoed.rejected and vetoed.reason == NONE_OF_THESE and vetoed.distance == pytest.approx(0.5)
    assert vetoed.none_confidence < 0.2  # the scores alone would have accepted it
    # A listed phrase heard with one character wrong in four (Traditional script is not a difference).
    kept = decide(["我想喝水", "我饿了"], sure, options, 2, free_text="我想喝誰")
    assert not kept.rejected and kept.best == "我想喝水" and kept.distance == pytest.approx(0.25)
    assert not decide(["我想喝水"], sure[:1], options, 1, free_text="我想喝水。").rejected
    assert decide(["我想喝水"], sure[:1], options, 1, free_text="").rejected  # heard nothing like it
    unchecked = PhraseOptions(temperature=0.5, none_score=-5.0, max_distance=None)
    assert not decide(["我想咳嗽", "我饿了"], sure, unchecked, 2, free_text="我想回家").rejected
    with pytest.raises(ResonanceError, match="max_distance"):
        PhraseOptions(max_distance=1.5)


def test_fit_calibration_recovers_the_parameters_that_made_the_data():
    rng = np.random.default_rng(0)
    a, b = 4.0, -5.0  # temperature 0.25, none_score -1.25
    rows = []
    for _ in range(3000):
        scores = -rng.gamma(2.0, 0.5, size=rng.integers(2, 8))
        z = np.append(a * scores, b)
        p = np.exp(z - z.max())
        rows.append((scores, int(rng.choice(len(z), p=p / p.sum()))))
    temperature, none_score = fit_calibration(rows)
    assert temperature == pytest.approx(0.25, rel=0.1)
    assert none_score == pytest.approx(-1.25, rel=0.1)


def test_fit_calibration_stays_finite_when_the_scores_separate_the_answers_perfectly():
    # A model scoring its own training recordings (export's per-patient fit): the right phrase always far
    # ahead, the left-out phrases' recordings always scoring low. Maximum likelihood has no temperature there
    # (it runs to 0: P(none) becomes a step); the prior keeps it near the defaults.
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(200):
        on = np.append(-0.5 - rng.random(), -6.0 - 2 * rng.random(4))  # the right phrase first
        off = -6.0 - 2 * rng.random(5)  # its phrase is not on the list: "none of these"
        rows += [(on, 0), (off, len(off))]
    plain, _ = fit_calibration(rows, prior=0.0)
    temperature, none_score = fit_calibration(rows)
    assert plain < temperature / 3  # the divergence the prior is for (it stops where the iterations end)
    assert 0.2 < temperature < 1.0
    assert -6.0 < none_score < -0.5  # between the two groups of scores: both are answered right
    fitted = PhraseOptions(temperature=temperature, none_score=none_score)
    assert decide(["a", "b"], np.array([-1.2, -7.0]), fitted, 2).best == "a"
    assert decide(["a", "b"], np.array([-6.5, -7.0]), fitted, 2).rejected


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_phrases_cli_edits_the_board_beside_the_bundle_and_never_the_model(run_cli, tiny_bundle, tmp_path):
    bundle = tmp_path / "p1"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    manifest["phrases"] = ["我想喝水", "我饿了"]  # what export writes: the phrases the patient recorded
    (bundle / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    files = {p.name: sha256(p) for p in bundle.iterdir()}  # the manifest included: the board is beside it
    listing = tmp_path / "more.txt"
    listing.write_text("# from a file\n帮我开灯\n\n我想喝水\n", encoding="utf-8")

    proc = run_cli(
        "phrases", "add", "--bundle", bundle, "我想喝水", "谢谢", "--from-file", listing, check=True
    )
    assert proc.stdout.splitlines() == [
        "我想喝水\trecorded",
        "我饿了\trecorded",
        "谢谢\tadded",
        "帮我开灯\tadded",
    ]
    assert "4 phrase(s) on the board" in proc.stderr and "2 recorded, 2 added" in proc.stderr
    proc = run_cli("phrases", "remove", "--bundle", bundle, "谢谢", "我饿了", check=True)
    assert proc.stdout.splitlines() == ["我想喝水\trecorded", "帮我开灯\tadded"]
    assert "1 recorded one(s) taken off" in proc.stderr
    proc = run_cli("phrases", "remove", "--bundle", bundle, "开门")
    assert (
        proc.returncode == 2
        and "not on the phrase board: 开门" in proc.stderr
        and "phrases list" in proc.stderr
    )
    proc = run_cli("phrases", "list", "--bundle", bundle, "--json", check=True)
    assert json.loads(proc.stdout) == [
        {"text": "我想喝水", "source": "recorded"},
        {"text": "帮我开灯", "source": "added"},
    ]

    assert {p.name: sha256(p) for p in bundle.iterdir() if p.name != BOARD_FILE} == files  # model untouched
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*files, BOARD_FILE])  # no temp files left
    load_manifest(bundle, verify=True)  # still a valid bundle
    found = Transcriber(bundle, threads=1).match_phrases(tone(1.0), top_k=5)
    assert {c.text for c in found.candidates} == {"我想喝水", "帮我开灯"}
    proc = run_cli("phrases", "add", "--bundle", bundle, "我饿了", check=True)  # back on, as recorded
    assert proc.stdout.splitlines() == ["我想喝水\trecorded", "我饿了\trecorded", "帮我开灯\tadded"]


def test_phrases_cli_says_what_an_edit_did_not_do(run_cli, tiny_bundle, tmp_path):
    bundle = tmp_path / "my bundles" / "p1"  # a path with a space: the hint's command must still run
    shutil.copytree(tiny_bundle, bundle)
    run_cli("phrases", "add", "--bundle", bundle, "我想喝水", check=True)

    proc = run_cli("phrases", "add", "--bundle", bundle, " 我想喝水 ", "帮我开灯", check=True)
    assert "already on the board: 我想喝水\n" in proc.stderr  # said, not an error: the board has it
    assert proc.stdout.splitlines() == ["我想喝水\tadded", "帮我开灯\tadded"]
    proc = run_cli("phrases", "add", "--bundle", bundle, "谢谢", "  ")
    assert proc.returncode == 2 and "phrase 2 of the 2 given is blank" in proc.stderr
    assert "谢谢" not in run_cli("phrases", "list", "--bundle", bundle, check=True).stdout  # nothing written
    proc = run_cli("phrases", "remove", "--bundle", bundle, "开门")
    assert proc.returncode == 2
    assert f"`resonance phrases list --bundle '{bundle}'` shows the board" in proc.stderr  # a command to copy


def test_transcribe_cli_mode(run_cli, bundle, tmp_path):
    clip = tmp_path / "a.wav"
    clip.write_bytes(wav(tone(1.0)))
    proc = run_cli("transcribe", "--bundle", bundle, "--mode", "both", "--json", clip, check=True)
    record = json.loads(proc.stdout.splitlines()[-1])
    assert record["phrase_reason"] in ("matched", "none_of_these")
    assert len(record["phrases"]) == 3 and isinstance(record["phrase_rejected"], bool)
    proc = run_cli("transcribe", "--bundle", bundle, "--mode", "phrases", clip, check=True)
    assert "phrase: " in proc.stdout
    proc = run_cli("transcribe", "--bundle", bundle, "--mode", "nonsense", clip)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_server_modes_and_a_bad_mode(bundle, tiny_bundle, tmp_path):
    from resonance.runtime.device_config import load_device_config
    from resonance.runtime.models import ModelRegistry
    from resonance.runtime.server import ServerSettings, create_app

    models = tmp_path / "bundles"
    models.mkdir()
    shutil.copytree(bundle, models / "p1")
    shutil.copytree(tiny_bundle, models / "p2")
    (models / "p2" / "manifest.json").write_text(
        (models / "p2" / "manifest.json").read_text(encoding="utf-8").replace('"p1"', '"p2"'),
        encoding="utf-8",
    )
    config = load_device_config(write_config(tmp_path / "test.yaml"))
    client = create_app(ModelRegistry(models, config), config, ServerSettings()).test_client()

    def post(**form):
        form["file"] = (io.BytesIO(wav(tone(1.0))), "a.wav")
        return client.post("/transcribe", data=form)

    free = post(patient="p1", mode="free")
    assert free.status_code == 200 and free.json["mode"] == "free" and "phrase" not in free.json
    default = post(patient="p1")
    assert default.json["mode"] == "both" and default.json["text"] == free.json["text"]
    assert set(default.json) >= {"phrase", "phrase_confidence", "phrases", "phrase_rejected"}
    assert len(default.json["phrases"]) == 3
    assert all(
        set(p) == {"text", "confidence"} and 0 <= p["confidence"] <= 1 for p in default.json["phrases"]
    )
    assert default.json["phrase"] is None if default.json["phrase_rejected"] else default.json["phrase"]
    phrases = post(patient="p1", mode="phrases")
    assert phrases.json["text"] == (phrases.json["phrase"] or "")
    no_list = post(patient="p2", mode="phrases")
    assert no_list.status_code == 200 and no_list.json["phrases"] == [] and no_list.json["phrase"] is None
    assert "no phrase list" in no_list.json["warning"] and no_list.json["text"] == free.json["text"]
    bad = post(patient="p1", mode="phrase-board")
    assert bad.status_code == 400
    assert bad.json["error"]["code"] == "bad_mode" and "free, phrases, both" in bad.json["error"]["hint"]


def test_eval_phrases_command_on_demo_clips(tiny_bundle, tmp_path, capsys):
    """The registered `eval phrases` command end to end (random weights: the numbers mean nothing here)."""
    from resonance.runtime.cli import register_eval

    bundle = tmp_path / "p1"
    shutil.copytree(tiny_bundle, bundle)
    onnx = {p.name: sha256(p) for p in bundle.iterdir() if p.suffix == ".onnx"}

    phrases = tmp_path / "phrases.txt"
    labels = json.loads((DEMO_DATA / "take1" / "labels.json").read_text(encoding="utf-8"))
    phrases.write_text("\n".join(entry["text"] for entry in labels), encoding="utf-8")
    parser = argparse.ArgumentParser(prog="resonance eval")
    register_eval(parser.add_subparsers())  # eval phrases (and eval vad)
    out = tmp_path / "report.json"
    argv = [
        "phrases",
        "--bundle",
        str(bundle),
        "--data",
        str(DEMO_DATA / "take2"),
        "--phrases",
        str(phrases),
    ]
    args = parser.parse_args([*argv, "--json", str(out), "--threads", "1", "--save"])
    assert args.run(args) == 0
    table = capsys.readouterr().out
    for line in ("top-1 in-list (no rejection)", "out-of-list rejected (taken out of the list)", "mode=both"):
        assert line in table
    report = json.loads(out.read_text(encoding="utf-8"))
    m = report["metrics"]
    assert len(report["phrases_removed"]) == round(0.2 * 26)
    assert m["n_removed"] == len(report["phrases_removed"]) and m["n_in_list"] == 26 - m["n_removed"]
    assert all(0 <= m[k] <= 1 for k in ("top1_in_list", "rejected_removed", "top1_with_rejection"))
    assert len(report["folds"]) == 2 and all(f["temperature"] > 0 for f in report["folds"])
    sweep = m["threshold_sweep"]  # a higher max_none rejects less and keeps more right answers
    assert [t["threshold"] for t in sweep] == sorted(t["threshold"] for t in sweep)
    assert all(a["rejected_removed"] >= b["rejected_removed"] for a, b in zip(sweep, sweep[1:]))
    assert all(a["top1_with_rejection"] <= b["top1_with_rejection"] for a, b in zip(sweep, sweep[1:]))
    assert all("best" in row and "rejected" in row for row in report["rows"])  # each counted in one fold
    # --save: the bundle keeps the fitted calibration, its model files do not change, the runtime uses it.
    saved = load_manifest(bundle, verify=True).phrase_calibration
    assert saved == report["calibration_all"] and saved["temperature"] > 0
    assert {p.name: sha256(p) for p in bundle.iterdir() if p.suffix == ".onnx"} == onnx
    options = Transcriber(bundle, threads=1, phrase_options={"top_k": 5}).phrase_options
    assert (options.temperature, options.none_score, options.top_k) == (
        saved["temperature"],
        saved["none_score"],
        5,
    )


def test_listen_matches_phrases_per_utterance(transcriber):
    from resonance.runtime.listen import UtteranceSegmenter, transcribe_utterances

    quiet = np.zeros(16000, np.float32) + 0.001 * np.random.default_rng(1).standard_normal(16000).astype(
        "float32"
    )
    audio = np.concatenate([quiet, tone(1.0), quiet, quiet, tone(1.0, freq=330.0), quiet, quiet])
    blocks = (audio[i : i + 1600] for i in range(0, audio.size - 1599, 1600))
    seen = []
    count = transcribe_utterances(
        transcriber, blocks, UtteranceSegmenter(), lambda result, seconds: seen.append(result), mode="both"
    )
    assert count == 2 == len(seen)
    assert all(r.mode == "both" and r.phrases is not None and r.phrases.total == len(PHRASES) for r in seen)
