"""The training report a family reads: plain words first (zh, then en), each phrase before -> after, the
technician's details last; report.png with a per-phrase panel, drawn without tofu whatever fonts exist."""

from __future__ import annotations

import json
import warnings

import pytest

from resonance.train.report import phrase_rows, render_text, with_verdict, write_report

SAID = ["我想喝水", "帮我开灯", "我饿了", "谢谢"]


def _report(**overrides):
    """A report as the trainer hands it to write_report (before verdict and warnings are added)."""
    report = {
        "cer_before": 0.8,
        "cer_after": 0.3,
        "improved": True,
        "n_train": 20,
        "n_validation": 2,
        "n_eval": 3,
        "train_texts": ["我想喝水"],
        "history": {"loss": [[1, 2.0], [2, 1.0]], "val": [[1, 0.5], [2, 0.7]]},
        "best_step": 1,
        "best_val_cer": 0.5,
        "selection_margin": 0.05,
        "eval_source": "take2",
        "data_seconds": 30.0,
        "steps": 2,
        "train_seconds": 1.0,
        "device": "cpu",
        "samples_per_second": 8.0,
        "window_seconds": 5.0,
        "utterances": [{"reference": "我想喝水", "before": "你想喝水", "hypothesis": "我想喝水"}],
    }
    return {**report, **overrides}


def _four_phrases(**overrides):
    """Generic right on 1 of 4, personal on 3 of 4; 谢谢 was not in the training recordings."""
    heard_before = ["你想喝水", "帮我开灯", "我的", "写写"]
    heard_after = ["我想喝水", "幫我開燈。", "我饿了", "谢"]  # Traditional + punctuation still count as right
    rows = [
        {"reference": r, "before": b, "hypothesis": h} for r, b, h in zip(SAID, heard_before, heard_after)
    ]
    return _report(utterances=rows, n_eval=4, train_texts=SAID[:3], **overrides)


EIGHT = ["我想喝水", "帮我开灯", "我饿了", "谢谢", "我想睡觉", "打开电视", "我很疼", "叫妈妈过来"]


def _eight_phrases(better: bool = True, **overrides):
    """Enough phrases to decide: the generic model gets each one wrong (one character), the personal model
    gets 7 of 8 right (``better``), or the other way round."""
    wrong = [p[:-1] + "啊" for p in EIGHT]
    right = [*EIGHT[:7], wrong[7]]
    before, after = (wrong, right) if better else (right, wrong)
    rows = [{"reference": r, "before": b, "hypothesis": h} for r, b, h in zip(EIGHT, before, after)]
    cers = [0.25, 0.03] if better else [0.03, 0.25]
    return _report(
        utterances=rows, n_eval=8, train_texts=EIGHT, cer_before=cers[0], cer_after=cers[1], **overrides
    )


def _no_validation(**overrides):
    """The demo's case: --val-fraction 0 with a second take as --eval-data; the trainer's best_step stays 0."""
    history = {"loss": [[1, 2.0], [2, 1.5], [3, 1.0]], "val": []}
    return _four_phrases(
        history=history,
        best_step=0,
        best_val_cer=None,
        selection_margin=None,
        n_validation=0,
        steps=3,
        **overrides,
    )


def _texts(fig, label: str) -> list[str]:
    from matplotlib.text import Text

    (ax,) = [a for a in fig.axes if a.get_label() == label]
    return [t.get_text() for t in ax.findobj(Text) if t.get_text()]


def test_report_says_in_words_whether_it_helped_and_warns(tmp_path):
    written = write_report(tmp_path, _eight_phrases())
    assert written == json.loads((tmp_path / "report.json").read_text())
    assert written["verdict"].startswith("Understands better") and "75% to 97%" in written["verdict"]
    assert written["verdict_zh"].startswith("认得更准了：") and "从 75% 提高到 97%" in written["verdict_zh"]
    assert written["verdict_result"] == "better" and written["comparison"]["n_phrases"] == 8
    warnings_ = " ".join(written["warnings"])  # the technician's wording, as before
    assert "Only 22 recordings" in warnings_ and "over-fitting" in warnings_
    plain = [a["zh"] for a in written_few(tmp_path)["advice"]]
    assert [p.split("：")[0].split("，")[0] for p in plain] == [
        "录音只有 22 段",
        "只用了 3 句录音来检验",
        "不同的句子太少",
        "训练后期反而变差了",
    ]
    assert len(written["advice"]) == len(written["warnings"]) and all(a["en"] for a in written["advice"])
    written = write_report(tmp_path, _eight_phrases())
    assert "我想喝水 | ✗ 我想喝啊 | ✓ 我想喝水" in (tmp_path / "report.txt").read_text()
    assert (tmp_path / "report.png").stat().st_size > 1000

    worse = write_report(tmp_path, _eight_phrases(better=False, improved=False))
    assert worse["verdict"].startswith("NOT better") and "Do not use this model" in worse["verdict"]
    assert worse["verdict_zh"].startswith("没有变得更准") and "先不要用这个模型" in worse["verdict_zh"]
    text = (tmp_path / "report.txt").read_text()
    assert text.splitlines()[0] == worse["verdict_zh"] and worse["verdict_better"] is False
    assert "--allow-worse" in text.split("技术细节")[1]  # the flag is for the technician, not the first part


def written_few(tmp_path):
    return write_report(tmp_path, _report())


def test_few_test_phrases_give_an_interval_and_do_not_block(tmp_path):
    from resonance.train.report import blocks_deployment

    # 30 recordings without --eval-data: the validation split holds 3 phrases. Even a loss on them cannot
    # be told from luck: the report says so, with the interval, and export/train do not refuse the model.
    rows = [
        {"reference": "我想喝水", "before": "我想喝水", "hypothesis": "我想喝"},
        {"reference": "帮我开灯", "before": "帮我开灯", "hypothesis": "帮我开灯"},
        {"reference": "我饿了", "before": "我饿", "hypothesis": "我饿了"},
    ]
    written = write_report(tmp_path, _report(utterances=rows, cer_before=0.1, cer_after=0.1, improved=False))
    assert (
        written["verdict"].startswith("No clear gain") and "3 test phrases are too few" in written["verdict"]
    )
    assert (
        written["verdict_zh"].startswith("没有明显变好") and "（3 句），还不能确定" in written["verdict_zh"]
    )
    assert written["verdict_result"] == "inconclusive" and not blocks_deployment(written)
    technical = (tmp_path / "report.txt").read_text().split("技术细节")[1]
    assert "paired bootstrap over 3 phrases" in technical and "95 % interval" in technical
    assert "fewer than 6 phrases cannot show" in technical and "--allow-worse" not in technical

    looks = write_report(tmp_path, _four_phrases())
    assert looks["verdict"].startswith("Looks better, but 4 test phrases are too few to be sure")
    assert looks["verdict_zh"].startswith("看起来更准了") and not blocks_deployment(looks)
    # A report written before the comparison existed keeps the old rule: any loss blocks.
    assert blocks_deployment({"improved": False}) and not blocks_deployment({"improved": True})


def test_report_text_opens_in_plain_words_zh_then_en_and_keeps_the_jargon_for_the_end(tmp_path):
    written = write_report(tmp_path, _four_phrases())
    text = (tmp_path / "report.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == written["verdict_zh"]
    assert lines[0].startswith("看起来更准了，但检验的句子太少（4 句），还不能确定：字的准确率 20% → 70%")
    assert lines[1] == written["verdict"] and lines[1].startswith(
        "Looks better, but 4 test phrases are too few"
    )
    family, technical = text.split("技术细节 / Technical details")
    for jargon in ("CER", "step", "loss", "--", "validation"):
        assert jargon not in family, jargon
    assert "CER" in technical and "generic 0.800 -> personalised 0.300" in technical
    assert "kept the weights of step 1 of 2" in technical and "step 1: 0.500, step 2: 0.700" in technical
    assert (
        "the personalised model decoded greedily (the device's beam search is usually a little better)"
        in (technical)
    )
    beams = render_text({**written, "settings": {**(written.get("settings") or {}), "eval_beams": 4}})
    assert "the personalised model decoded with 4 beams, the generic one greedily" in beams
    # Each phrase once, numbered, right or wrong per model; the Traditional reply is shown in Simplified.
    assert "  1. 我想喝水 | ✗ 你想喝水 | ✓ 我想喝水" in family
    assert "  2. 帮我开灯 | ✓ 帮我开灯 | ✓ 帮我开灯。" in family
    assert "  4. 谢谢 | ✗ 写写 | ✗ 谢   (*)" in family and "(*) 训练时没有录过这句" in family
    assert json.loads((tmp_path / "report.json").read_text())["scores"] == {
        "n_eval": 4,
        "chars_before": pytest.approx(20.0),
        "chars_after": pytest.approx(70.0),
        "phrases_before": 1,
        "phrases_after": 3,
    }


def test_fewer_insertions_but_nothing_more_right_is_no_clear_gain(tmp_path):
    # A looping generic model (CER 24) against one that loops less (CER 9.6): fewer mistakes counted, yet
    # neither gets a character right. "Understands better: 0% to 0%" would be nonsense to a family.
    rows = [{"reference": "再见", "before": "yemek " * 40, "hypothesis": "ją " * 16}]
    written = write_report(tmp_path, _report(cer_before=24.0, cer_after=9.6, utterances=rows, n_eval=1))
    assert written["verdict_zh"].startswith("没有明显变好：字的准确率 0% → 0%")
    assert written["verdict"].startswith("No clear gain") and written["verdict_better"] is False
    assert written["improved"] is True  # fewer mistakes, but one phrase cannot tell: export does not refuse
    line = next(x for x in (tmp_path / "report.txt").read_text().splitlines() if x.startswith("  1. 再见"))
    assert len(line) < 120 and "…" in line  # the loop is cut in the text (report.json keeps it whole)


def test_no_validation_set_says_the_last_step_was_kept_not_kept_0(tmp_path):
    write_report(tmp_path, _no_validation())
    text = (tmp_path / "report.txt").read_text(encoding="utf-8")
    assert "kept 0" not in text and "step 0" not in text
    assert "no validation phrases (--val-fraction 0): the weights after the last step (3) were kept" in text
    assert "validation CER per evaluation" not in text


def test_png_has_the_per_phrase_panel_and_the_validation_curve_only_when_there_is_one():
    import matplotlib

    matplotlib.use("Agg")
    from resonance.train.report_plot import find_cjk_font, report_figure

    font = find_cjk_font()
    if font is None:
        pytest.skip(
            "no CJK font installed (e.g. apt install fonts-wqy-zenhei): the Chinese drawing is untested"
        )

    def figure(report):
        report = with_verdict(report)
        return report_figure(report, phrase_rows(report), font)

    fig = figure(_four_phrases())
    phrases = _texts(fig, "phrases")
    assert [said in phrases for said in SAID] == [
        True,
        True,
        True,
        False,
    ] and "谢谢 *" in phrases  # * untrained
    assert (
        "✓ 帮我开灯。" in phrases and "✗ 你想喝水" in phrases and "✓ 我饿了" in phrases and "✗ 谢" in phrases
    )
    assert any("个人模型听成" in t for t in phrases)
    assert _texts(fig, "header")[0].startswith("看起来更准了")
    assert "20 / 4" not in _texts(fig, "scores") and "3 / 4" in _texts(fig, "scores")
    curves = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert any("validation" in c for c in curves) and any("kept" in c for c in curves)

    fig = figure(_no_validation())
    curves = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert not any("validation" in c for c in curves)
    assert any("no validation curve" in t for t in _texts(fig, "progress"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph the fonts lack is a warning: it would be a box in the PNG
        fig.canvas.draw()


def test_without_a_cjk_font_the_png_numbers_the_phrases_instead_of_drawing_boxes(tmp_path, monkeypatch):
    from matplotlib.text import Text

    from resonance.train import report_plot

    assert report_plot.find_cjk_font(("No Such Font",)) is None
    monkeypatch.setattr(report_plot, "find_cjk_font", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s) DejaVu Sans" would fail here
        written = write_report(tmp_path, _four_phrases())
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert written["verdict_zh"] in (tmp_path / "report.txt").read_text(encoding="utf-8")  # the text keeps it

    fig = report_plot.report_figure(written, phrase_rows(written), None)
    drawn = [t.get_text() for t in fig.findobj(Text)]
    assert not any(report_plot.has_cjk(t) for t in drawn), [t for t in drawn if report_plot.has_cjk(t)]
    phrases = _texts(fig, "phrases")
    assert "phrase 1" in phrases and "phrase 4 *" in phrases and "✗" in phrases and "✓" in phrases
    assert any("numbered as in report.txt" in t for t in phrases)
    assert _texts(fig, "header")[0].startswith("Looks better")


def test_report_shows_hypotheses_in_simplified_but_keeps_them_raw_in_json(tmp_path):
    rows = [{"reference": "对这行事", "before": "對這行事", "hypothesis": "對這行事吧"}]
    written = write_report(tmp_path, _report(utterances=rows, eval_is_validation=True))
    assert "对这行事 | ✓ 对这行事 | ✗ 对这行事吧" in (tmp_path / "report.txt").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["utterances"] == rows
    assert any("optimistic" in w for w in written["warnings"])
    assert any("偏乐观" in a["zh"] for a in written["advice"])
    assert not any("optimistic" in w for w in write_report(tmp_path, _report())["warnings"])
    # --keep last (the default): validation only measured, it picked nothing, so its number is fair.
    fair = write_report(tmp_path, _report(utterances=rows, eval_is_validation=True, keep="last"))
    assert not any("optimistic" in w for w in fair["warnings"])
    assert any("held out of training" in w for w in fair["warnings"])
    assert any("没有参与训练" in a["zh"] for a in fair["advice"])


def test_overfitting_warning_only_when_an_earlier_step_was_kept():
    from resonance.train.report import overfitting_warning

    # The audit's case: the last step (48) was kept, within the margin of the best: no warning.
    assert overfitting_warning([[24, 0.30], [36, 0.38], [48, 0.35]], kept_step=48, margin=0.088) is None
    rose = overfitting_warning([[24, 0.30], [36, 0.45], [48, 0.50]], kept_step=24, margin=0.088)
    assert rose and "after step 24" in rose and "step 24 was kept" in rose and "up to step 48" in rose
    # A later evaluation within the margin would have been kept: these numbers are not over-fitting.
    assert overfitting_warning([[24, 0.30], [48, 0.35]], kept_step=24, margin=0.088) is None
    assert overfitting_warning([], kept_step=0, margin=0.0) is None


def test_test_recordings_that_were_trained_on_make_the_measure_optimistic(tmp_path):
    written = write_report(tmp_path, _report(n_eval_trained_on=2))
    assert "2 of the 3 test recordings were trained on: the measure is optimistic" in " ".join(
        written["warnings"]
    )
    assert any("检验用的 3 句录音里有 2 句也用来训练过" in a["zh"] for a in written["advice"])
    assert (
        "2 of the 3 recordings used to check were also used to train" in (tmp_path / "report.txt").read_text()
    )
    assert not any(
        "trained on" in w for w in write_report(tmp_path, _report(n_eval_trained_on=0))["warnings"]
    )


def test_one_recording_is_not_written_as_recordings(tmp_path):
    written = write_report(tmp_path, _report(n_train=1, n_validation=0, n_eval=1, n_eval_trained_on=1))
    text = (tmp_path / "report.txt").read_text(encoding="utf-8")
    assert "Only 1 recording was used to check" in text and "Only 1 recording: record" in text
    assert "over 1 phrase:" in text and "trained on 1 recording (" in text
    assert "1 of the 1 test recording was trained on" in " ".join(written["warnings"])
    assert not any(f"1 {noun}s" in text for noun in ("recording", "phrase", "test recording"))
