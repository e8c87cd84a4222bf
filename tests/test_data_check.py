"""labels.json loading and `resonance data check` on real audio files with real problems."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import tone

from resonance.data.check import check_dataset, format_report, inspect_dataset, wav_data_shortfall
from resonance.data.labels import LABELS_FROM_NAMES, Utterance, load_labels, save_labels
from resonance.errors import ResonanceError

PHRASES = [
    "我想喝水",
    "我饿了",
    "我想吃饭",
    "帮我开灯",
    "我要上厕所",
    "我肚子疼",
    "帮我把被子拿开",
    "我冷",
    "我热",
]


def clean_entries(count: int):
    """Distinct phrases, each a tone at its own pitch (so no two files are identical)."""
    return [(f"{PHRASES[i % len(PHRASES)]}{i}", tone(1.0, freq=200 + 10 * i), 16000) for i in range(count)]


def codes(problems):
    return {(p.item, p.code) for p in problems}


def add_entry(root: Path, rel: str, text: str) -> None:
    labels = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    labels.append({"audio": rel, "text": text})
    (root / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")


def write(root: Path, rel: str, samples, rate=16000, **kwargs) -> str:
    sf.write(root / rel, np.asarray(samples, dtype=np.float32), rate, **kwargs)
    return rel


# --- load_labels / save_labels ---------------------------------------------------------------------------


def test_load_labels_gives_absolute_paths_and_keeps_rel(make_dataset):
    root = make_dataset([("我想喝水", tone(), 16000), ("  我饿了 ", tone(), 16000)])
    utterances = load_labels(root)
    assert [u.text for u in utterances] == ["我想喝水", "我饿了"]
    assert utterances[0].rel == "audio/000_我想喝水.wav"
    assert utterances[0].audio.is_absolute() and utterances[0].audio.is_file()


def test_load_labels_accepts_bom_and_windows_separators(make_dataset):
    root = make_dataset([("我想喝水", tone(), 16000)])
    text = json.dumps([{"audio": "audio\\000_我想喝水.wav", "text": "我想喝水"}], ensure_ascii=False)
    (root / "labels.json").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    (utterance,) = load_labels(root)
    assert utterance.audio == (root / "audio" / "000_我想喝水.wav").resolve()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[{"audio": "a.wav", "text": "x"},\n {"audio": "b.wav" "text": "y"}]', "line 2, column 20"),
        ('{"audio": "a.wav", "text": "x"}', "not a list"),
        ('[{"audio": "audio/000_我想喝水.wav"}]', "no 'text' key"),
        ('[{"audio": 5, "text": "x"}]', "'audio' must be a non-empty string"),
        ('[{"audio": "audio/000_我想喝水.wav", "text": ["x"]}]', "'text' must be a string"),
        ('[{"audio": "../secret.wav", "text": "x"}]', "outside the data folder"),
        ('[{"audio": "audio/../../x.wav", "text": "x"}]', "outside the data folder"),
        ('[{"audio": "/etc/passwd", "text": "x"}]', "is absolute"),
        ('[{"audio": "C:\\\\data\\\\a.wav", "text": "x"}]', "is absolute"),
        ('[{"audio": "audio/000_我想喝水.wav", "text": "  "}]', "is empty"),
        ('[{"audio": "audio/000_我想喝水.wav", "text": "。！"}]', "is only punctuation: '。！'"),
        ('[{"audio": "audio/000_我想喝水.wav", "text": "\u200b, ?"}]', "is only punctuation"),
        ("[]", "no entries"),
    ],
)
def test_load_labels_rejects_bad_labels_with_a_hint(make_dataset, content, expected):
    root = make_dataset([("我想喝水", tone(), 16000)])
    (root / "labels.json").write_text(content, encoding="utf-8")
    with pytest.raises(ResonanceError) as info:
        load_labels(root)
    assert expected in info.value.message
    assert info.value.hint


def test_load_labels_lists_missing_files(make_dataset):
    root = make_dataset([(f"我想喝水{i}", tone(), 16000) for i in range(8)])
    for path in sorted((root / "audio").iterdir())[:7]:
        path.unlink()
    with pytest.raises(ResonanceError, match=r"7 audio file\(s\).*000_我想喝水0.wav.*and 2 more"):
        load_labels(root)
    assert len(load_labels(root, check_files=False)) == 8


def test_load_labels_missing_folder_or_file(tmp_path):
    with pytest.raises(ResonanceError, match="does not exist"):
        load_labels(tmp_path / "nope")
    with pytest.raises(ResonanceError, match=r"labels\.json not found"):
        load_labels(tmp_path)


def test_save_labels_round_trips_and_leaves_no_temp_files(make_dataset):
    root = make_dataset([("我想喝水", tone(), 16000), ("我饿了", tone(), 16000)])
    utterances = load_labels(root)
    save_labels(root, [utterances[1], {"audio": "audio\\000_我想喝水.wav", "text": "我想喝水"}])
    assert json.loads((root / "labels.json").read_text(encoding="utf-8")) == [
        {"audio": "audio/001_我饿了.wav", "text": "我饿了"},
        {"audio": "audio/000_我想喝水.wav", "text": "我想喝水"},
    ]
    assert sorted(p.name for p in root.iterdir()) == ["audio", "labels.json"]
    assert load_labels(root)[0] == Utterance(utterances[1].audio, "我饿了", "audio/001_我饿了.wav")


# --- check_dataset ---------------------------------------------------------------------------------------


def test_clean_dataset_has_no_problems(make_dataset):
    root = make_dataset(clean_entries(30))
    report = inspect_dataset(root)
    assert report.problems == []
    assert report.utterances == 30
    assert report.total_seconds == pytest.approx(30.0)


def test_real_speech_clips_pass(demo_data):
    """The built-in demo recordings (real speech): no errors, and only the 'few utterances' warning."""
    assert codes(check_dataset(demo_data)) == {("dataset", "few-utterances")}


def test_check_refuses_a_label_of_only_punctuation(demo_data):
    """A label with no word scores CER 0 whatever the model says: training on it would report 100 % right."""
    labels = json.loads((demo_data / "labels.json").read_text(encoding="utf-8"))
    labels[3]["text"] = "。！"
    (demo_data / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    errors = [p for p in check_dataset(demo_data) if p.severity == "error"]
    assert [(p.item, p.code) for p in errors] == [("labels.json[3]", "empty-text")]
    assert "only punctuation" in errors[0].message


def test_check_finds_each_problem(make_dataset):
    good = clean_entries(3)
    root = make_dataset(good)
    rate44 = 44100
    t = np.arange(int(0.2 * 16000)) / 16000
    stereo = np.stack([tone(1.0, rate44), tone(1.0, rate44, freq=330)], axis=1)
    cases = {
        # rel: (text, expected codes)
        write(root, "audio/a_44k.wav", stereo, rate44, subtype="PCM_16"): (
            "立体声",
            {"sample-rate", "channels"},
        ),
        write(root, "audio/b_8k.wav", tone(1.0, 8000), 8000): ("八千", {"sample-rate"}),
        write(root, "audio/c_float.wav", tone(1.0, freq=500), subtype="FLOAT"): ("浮点", {"bit-depth"}),
        write(root, "audio/d_silence.wav", np.zeros(16000)): ("安静", {"silent"}),
        write(
            root, "audio/e_click.wav", np.r_[np.zeros(8000), 0.5 * np.sin(t[:160] * 9000), np.zeros(8000)]
        ): (
            "咔哒",
            {"mostly-silent"},
        ),
        write(root, "audio/f_clipped.wav", np.clip(tone(1.0, freq=510, amp=3.0), -1, 1)): (
            "削波",
            {"clipping"},
        ),
        write(root, "audio/g_short.wav", tone(0.1, freq=520)): ("短", {"too-short"}),
        write(root, "audio/h_long.wav", tone(7.0, freq=530)): ("长", {"long"}),
        write(root, "audio/i_too_long.wav", tone(31.0, freq=540)): ("太长", {"too-long"}),
        write(root, "audio/j_lead.wav", np.r_[np.zeros(32000), tone(1.0, freq=550)]): (
            "开头",
            {"silence-start"},
        ),
        write(root, "audio/k_quiet.wav", tone(1.0, freq=560, amp=0.01)): ("小声", {"quiet"}),
        write(root, "audio/l_flac.wav", tone(1.0, freq=570), format="FLAC"): ("无损", {"format"}),
        write(root, "audio/001_我想吃饭.wav", tone(1.0, freq=580)): ("我想喝水", {"name-mismatch"}),
        write(root, "audio/m_wavex.wav", tone(1.0, freq=590), format="WAVEX"): ("扩展", set()),
        write(root, "audio/n_24bit.wav", tone(1.0, freq=600), subtype="PCM_24"): ("二十四位", {"bit-depth"}),
    }
    for rel, (text, _) in cases.items():
        add_entry(root, rel, text)
    problems = check_dataset(root)
    for rel, (_, expected) in cases.items():
        assert {p.code for p in problems if p.item == rel} == expected, rel
    good_files = {f"audio/{i:03d}_{text}.wav" for i, (text, _, _) in enumerate(good)}
    assert not [p for p in problems if p.item in good_files]
    assert all(p.fix for p in problems)
    assert [p.severity for p in problems] == sorted(
        (p.severity for p in problems), key=lambda s: s != "error"
    )


def test_check_finds_label_and_file_problems(make_dataset):
    root = make_dataset(clean_entries(3))
    good = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    # a truncated WAV, a PNG renamed .wav, identical content, an unlabelled file
    full = (root / good[0]["audio"]).read_bytes()
    (root / "audio/trunc.wav").write_bytes(full[: len(full) // 2])
    (root / "audio/image.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    (root / "audio/copy.wav").write_bytes(full)
    write(root, "audio/stray.wav", tone(1.0, freq=600))
    sf.write(root / "audio/empty_text.wav", tone(1.0, freq=610), 16000)
    labels = [
        *good,
        {"audio": "audio/trunc.wav", "text": "截断"},
        {"audio": "audio/image.wav", "text": "图片"},
        {"audio": "audio/copy.wav", "text": "复制"},
        {"audio": good[1]["audio"], "text": "又一次"},  # the same file listed twice
        {"audio": "audio/missing.wav", "text": "不见了"},
        {"audio": "audio/empty_text.wav", "text": " "},
        {"audio": "../outside.wav", "text": "外面"},
        {"audio": "audio/dup_text.wav", "text": good[2]["text"] + "。"},  # the same phrase as CER sees it
        {"text": "没有路径"},
    ]
    write(root, "audio/dup_text.wav", tone(1.0, freq=620))
    (root / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")

    report = inspect_dataset(root)
    found = codes(report.problems)
    expected = {
        ("audio/trunc.wav", "truncated"),
        ("audio/image.wav", "unreadable"),
        ("audio/copy.wav", "identical-audio"),
        ("audio/stray.wav", "unlabelled-audio"),
        (good[1]["audio"], "duplicate-audio"),
        ("audio/missing.wav", "missing-file"),
        ("labels.json[8]", "empty-text"),
        ("labels.json[9]", "path-outside-folder"),
        (f'"{good[2]["text"]}"', "duplicate-text"),
        ("labels.json[11]", "missing-key"),
        ("dataset", "few-utterances"),
    }
    assert found == expected
    # the file of the entry with empty text is listed, so it is not "unlabelled"
    assert ("audio/empty_text.wav", "unlabelled-audio") not in found
    severities = {p.code: p.severity for p in report.problems}
    assert severities["truncated"] == severities["duplicate-audio"] == severities["empty-text"] == "error"
    assert severities["duplicate-text"] == severities["identical-audio"] == "warning"
    truncated = next(p for p in report.problems if p.code == "truncated")
    assert "1.00 s" in truncated.message and "0.50 s" in truncated.message


@pytest.mark.parametrize(
    ("content", "expected"),
    [("[{]", "not valid JSON: "), ('{"a": 1}', "not a list"), (None, "not found")],
)
def test_unusable_labels_file_is_one_error(make_dataset, content, expected):
    root = make_dataset(clean_entries(2))
    if content is None:
        (root / "labels.json").unlink()
    else:
        (root / "labels.json").write_text(content, encoding="utf-8")
    problems = check_dataset(root)
    assert [(p.severity, p.item) for p in problems] == [("error", "labels.json")]
    assert expected in problems[0].message


def test_missing_folder_is_an_error_not_a_report(tmp_path):
    with pytest.raises(ResonanceError, match="does not exist"):
        check_dataset(tmp_path / "nope")


def test_noisy_leading_silence_is_found(demo_data):
    """Real speech after 2 s of room noise (not digital silence) still counts as leading silence."""
    path = sorted((demo_data / "audio").iterdir())[0]
    speech, rate = sf.read(path, dtype="float32")
    noise = np.random.default_rng(0).normal(0, 0.01, 2 * rate).astype(np.float32)
    sf.write(path, np.r_[noise, speech + np.random.default_rng(1).normal(0, 0.01, len(speech))], rate)
    found = {p.code for p in check_dataset(demo_data) if p.item == f"audio/{path.name}"}
    assert found == {"silence-start"}


def test_wav_data_shortfall_ignores_streamed_headers(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(1.0), 16000, subtype="PCM_16")
    assert wav_data_shortfall(path) is None
    data = bytearray(path.read_bytes())
    data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # length unknown, as ffmpeg writes to a pipe
    path.write_bytes(bytes(data))
    assert wav_data_shortfall(path) is None
    path.write_bytes(bytes(data[:1000]))
    assert wav_data_shortfall(path) is None
    data[40:44] = (32000).to_bytes(4, "little")
    path.write_bytes(bytes(data[:1000]))
    assert wav_data_shortfall(path) == (32000, 1000 - 44)


def test_table_aligns_chinese_file_names(make_dataset):
    root = make_dataset(clean_entries(2))
    text = format_report(inspect_dataset(root), width=100)
    header, row = text.splitlines()[:2]
    assert header.startswith("SEVERITY  ITEM") and row.startswith("warning   dataset")
    assert text.splitlines()[-1].endswith(
        "2 utterances, 0.0 minutes of audio, 0 errors, 1 warning — ready for training"
    )


def test_summary_counts_only_usable_recordings(make_dataset):
    """A missing or unreadable file is no utterance to train on (it was counted: "3 utterances")."""
    root = make_dataset(clean_entries(3))
    (root / "audio/000_我想喝水0.wav").unlink()
    (root / "audio/001_我饿了1.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(500))
    report = inspect_dataset(root)
    assert (report.utterances, report.usable, report.unusable) == (3, 1, 2)
    assert report.total_seconds == pytest.approx(1.0)
    assert (
        format_report(report)
        .splitlines()[-1]
        .endswith(
            "1 usable utterance (2 unusable), 0.0 minutes of audio, 2 errors, 1 warning — fix the errors before training"
        )
    )
    summary = report.to_json()
    assert (summary["utterances"], summary["usable_utterances"], summary["unusable_utterances"]) == (3, 1, 2)


def test_recordings_missing_from_labels_are_one_warning(make_dataset, tmp_path):
    """labels.json `[]` beside 30 recordings: one error and one warning, not 30 three-line warnings."""
    root = make_dataset(clean_entries(30))
    (root / "labels.json").write_text("[]", encoding="utf-8")
    report = inspect_dataset(root)
    assert [(p.severity, p.code) for p in report.problems] == [
        ("error", "no-utterances"),
        ("warning", "unlabelled-audio"),
    ]
    warning = report.problems[1]
    assert warning.item == "audio/"
    assert warning.message.startswith(
        "30 audio files not listed in labels.json (training will not use them): "
    )
    assert (
        "audio/000_我想喝水0.wav, audio/001_我饿了1.wav, audio/002_我想吃饭2.wav … and 27 more"
        in warning.message
    )
    assert warning.fix.endswith(LABELS_FROM_NAMES)  # the one text the missing-labels.json error gives too
    assert len(format_report(report, width=120).splitlines()) < 12
    # The table names three; `--json` carries every one, for a script to act on.
    listed = report.to_json()["problems"][1]["files"]
    assert len(listed) == 30 and listed[:2] == ["audio/000_我想喝水0.wav", "audio/001_我饿了1.wav"]
    # The advice works as written: with the empty labels.json moved out, convert names all 30 from their files.
    assert "move the empty labels.json out of the folder" in warning.fix
    from resonance.data.convert import convert_dataset

    (root / "labels.json").rename(tmp_path / "empty-labels.json")
    result = convert_dataset(root, tmp_path / "converted", show_progress=False)
    assert result.labels_from_names and result.utterances == 30


def test_check_does_not_send_the_user_to_check(make_dataset):
    """Other commands end a labels.json error with "`resonance data check DIR` lists every problem"; the
    table of that very command does not."""
    root = make_dataset(clean_entries(1))
    (root / "labels.json").write_text('[{"audio": 5, "text": "x"}]', encoding="utf-8")
    with pytest.raises(ResonanceError) as info:
        load_labels(root)
    assert "resonance data check DIR" in info.value.hint
    (problem,) = [p for p in check_dataset(root) if p.severity == "error"]
    assert problem.fix.startswith("labels.json must be a list") and "data check" not in problem.fix
    (root / "labels.json").write_text("[{]", encoding="utf-8")
    (problem,) = check_dataset(root)
    assert problem.fix.startswith("fix the JSON there") and "data check" not in problem.fix


# --- the real command ------------------------------------------------------------------------------------


def test_cli_check_exit_codes_and_output(make_dataset, run_cli):
    root = make_dataset([*clean_entries(2), ("太快", tone(1.0, 44100), 44100)])
    proc = run_cli("data", "check", root)
    assert proc.returncode == 1, proc.stderr
    assert "error     audio/002_太快.wav  sample rate is 44100 Hz" in proc.stdout
    assert "resonance data convert" in proc.stdout
    assert "3 utterances, " in proc.stdout and "1 error, 1 warning — fix the errors" in proc.stdout

    proc = run_cli("data", "check", root, "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert (report["utterances"], report["errors"], report["warnings"]) == (3, 1, 1)
    assert [(p["code"], p["message"]) for p in report["problems"]] == [
        ("sample-rate", "sample rate is 44100 Hz, not 16000 Hz"),
        ("few-utterances", "only 3 utterances; training works best with 50-100"),
    ]

    (root / "audio" / "002_太快.wav").unlink()
    (root / "labels.json").write_text(json.dumps(json.loads((root / "labels.json").read_text("utf-8"))[:2]))
    proc = run_cli("data", "check", root)
    assert proc.returncode == 0, proc.stdout  # warnings do not fail
    assert "0 errors, 1 warning — ready for training" in proc.stdout


def test_cli_check_missing_folder_exits_2_with_hint(tmp_path, run_cli):
    proc = run_cli("data", "check", tmp_path / "nope")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "what to do:" in proc.stderr


def test_cli_help_ends_with_examples(run_cli):
    for command in ("check", "convert", "record"):
        proc = run_cli("data", command, "--help", check=True)
        assert f"examples:\n  resonance data {command}" in proc.stdout


# --- hostile or clumsy input (issue #12) ------------------------------------------------------------------


def test_a_5000_character_label_is_a_short_report_with_a_warning(make_dataset):
    """The table used to wrap the label quadratically (minutes) and print it whole; now it is quoted short."""
    root = make_dataset([("我想喝水", tone(2.0), 16000)])
    labels = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    labels[0]["text"] = "我想喝水" * 1250
    (root / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    report = inspect_dataset(root)
    long_text = next(p for p in report.problems if p.code == "long-text")
    assert long_text.severity == "warning" and "5,000 characters for 2.0 s" in long_text.message
    text = format_report(report, width=120)
    assert len(text.splitlines()) < 20 and len(text) < 3000


def test_deeply_nested_labels_json_is_one_error_not_a_recursion_error(make_dataset):
    root = make_dataset(clean_entries(1))
    (root / "labels.json").write_text("[" * 100000, encoding="utf-8")
    with pytest.raises(ResonanceError, match="nested too deeply") as info:
        load_labels(root)
    assert "labels.json must be a list" in info.value.hint
    assert [(p.code, p.severity) for p in check_dataset(root)] == [("labels-unreadable", "error")]


def test_a_huge_or_deep_value_in_an_entry_is_quoted_briefly(make_dataset):
    root = make_dataset(clean_entries(1))
    (root / "labels.json").write_text(
        json.dumps([{"audio": "audio/x.wav", "text": [[[[[[[["deep"]]]]]]]] * 5000}]), encoding="utf-8"
    )
    (problem,) = [p for p in check_dataset(root) if p.code == "bad-text"]
    assert len(problem.message) < 120


def test_symlinks_that_leave_the_dataset_are_refused(make_dataset, tmp_path):
    """A link to a file (or an audio/ folder) outside the dataset is never read as this person's recording."""
    outside = make_dataset(clean_entries(2), name="someone_else")
    root = make_dataset(clean_entries(1))
    (root / "audio" / "linked.wav").symlink_to(next((outside / "audio").iterdir()))
    (root / "audio" / "sub").symlink_to(outside / "audio", target_is_directory=True)
    inside = root / "audio" / "same.wav"  # a link that stays inside the folder is fine
    inside.symlink_to(next((root / "audio").glob("000_*.wav")))
    add_entry(root, "audio/linked.wav", "别人的")
    add_entry(root, "audio/sub/" + next((outside / "audio").iterdir()).name, "别人的")
    with pytest.raises(
        ResonanceError, match=r"labels\.json\[1\]: audio path 'audio/linked\.wav' is a symbolic link"
    ) as info:
        load_labels(root)
    assert "copy the recording into the data folder" in info.value.hint
    found = {(p.item, p.code) for p in check_dataset(root) if p.severity == "error"}
    assert found == {("labels.json[1]", "link-outside-folder"), ("labels.json[2]", "link-outside-folder")}
    add_entry(root, "audio/same.wav", "我想喝水")
    assert len(parse_labels_ok(root)) == 2


def parse_labels_ok(root: Path):
    from resonance.data.labels import parse_labels, read_labels_json

    return parse_labels(root, read_labels_json(root))[0]


def test_traditional_labels_are_named_and_converted_on_request(make_dataset, run_cli):
    root = make_dataset([("帮我开灯", tone(1.0), 16000), ("我想喝水", tone(1.0, freq=300), 16000)])
    labels = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    labels[0]["text"] = "幫我開燈"  # typed on a Traditional keyboard; the file name is Simplified
    labels[1]["speaker"] = "a"  # a field of the user's own: kept as it is
    original = json.dumps(labels, ensure_ascii=False)
    (root / "labels.json").write_text(original, encoding="utf-8")
    problems = {p.code: p for p in check_dataset(root)}
    assert "name-mismatch" not in problems  # not "labels shifted by one entry?"
    warning = problems["traditional-labels"]
    assert "1 of 2 labels" in warning.message and "'幫我開燈' (Simplified: '帮我开灯')" in warning.message
    assert f"resonance data check {root} --to-simplified" in warning.fix

    proc = run_cli("data", "check", root, "--to-simplified")
    assert "converted 1 label(s) to Simplified" in proc.stderr and "traditional-labels" not in proc.stdout
    converted = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    assert [e["text"] for e in converted] == ["帮我开灯", "我想喝水"] and converted[1]["speaker"] == "a"
    assert (root / "labels.traditional.json").read_text(encoding="utf-8") == original  # nothing lost
    again = run_cli("data", "check", root, "--to-simplified")
    assert "already in Simplified" in again.stderr
    assert (root / "labels.traditional.json").read_text(encoding="utf-8") == original
    labels[1]["text"] = "我想喝水"
    (root / "labels.json").write_text(json.dumps([{**labels[0]}, labels[1]], ensure_ascii=False), "utf-8")
    refused = run_cli("data", "check", root, "--to-simplified")  # a second original is never overwritten
    assert refused.returncode == 2 and "labels.traditional.json already exists" in refused.stderr


def test_labels_with_invisible_characters_are_a_warning_naming_them(make_dataset):
    root = make_dataset([("我想喝水", tone(1.0), 16000), ("帮我开灯", tone(1.0, freq=300), 16000)])
    labels = json.loads((root / "labels.json").read_text(encoding="utf-8"))
    labels[0]["text"] = "我想\u200d喝水\u200b\ufeff"  # pasted from a chat app: looks like 我想喝水
    (root / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    [warning] = [p for p in check_dataset(root) if p.code == "invisible-characters"]
    assert warning.severity == "warning" and warning.item == labels[0]["audio"]
    assert "U+200D, U+200B, U+FEFF" in warning.message
    assert warning.fix == "remove the invisible character(s) from its text in labels.json"


def test_to_simplified_on_labels_that_are_not_a_list_says_how_to_fix_them(tmp_path):
    """It said "see the report" and stopped before any report was printed."""
    from resonance.data.check import convert_labels_to_simplified

    (tmp_path / "labels.json").write_text('{"audio": "audio/1.wav", "text": "我想喝水"}', encoding="utf-8")
    with pytest.raises(ResonanceError, match="not a list of entries, so nothing was converted") as refused:
        convert_labels_to_simplified(tmp_path)
    assert '[{"audio": ' in refused.value.hint and "see the report" not in refused.value.hint
