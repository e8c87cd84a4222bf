"""The OpenAI endpoint as OpenAI's own Python client meets it: `resonance serve` on loopback, the tiny bundle.

Every response format, streaming, /v1/models, and the refusals (language, prompt, temperature, unknown fields)
in OpenAI's error shape, read back through the client's own types and exceptions.
"""

from __future__ import annotations

import io
import re
import shutil

import openai
import pytest
from helpers import Server, copy_bundle, tone, wav, write_config

CLIP_S = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("openai")
    models = root / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    srv = Server(models, write_config(root / "test.yaml", max_audio_seconds=40))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def clip(seconds: float = CLIP_S):
    return ("clip.wav", wav(tone(seconds, freq=330.0)), "audio/wav")


def test_models_lists_the_patient_and_the_whisper_1_alias(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["p1", "whisper-1"]
    assert all(
        m.object == "model" and m.owned_by == "resonance" and m.created > 1_600_000_000 for m in models
    )


def test_retrieve_answers_for_each_listed_model_and_not_found_in_openais_shape(client):
    for listed in client.models.list():
        assert client.models.retrieve(listed.id) == listed
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nobody")
    body = info.value.body
    assert (body["type"], body["code"]) == ("invalid_request_error", "model_not_found")
    assert body["param"] == "model"
    assert "nobody" in body["message"] and "GET /v1/models" in body["hint"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the openai client marks translations deprecated
def test_translation_is_refused_in_openais_shape_saying_why(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.audio.translations.create(model="whisper-1", file=clip())
    body = info.value.body
    assert (body["type"], body["code"]) == ("invalid_request_error", "translation_not_supported")
    assert "(zh)" in body["message"] and "/v1/audio/transcriptions" in body["hint"]


def test_json_and_text_agree(client):
    body = client.audio.transcriptions.create(model="whisper-1", file=clip())
    assert isinstance(body.text, str) and body.text
    text = client.audio.transcriptions.create(model="p1", file=clip(), response_format="text")
    assert text == body.text + "\n"


def test_verbose_json_has_a_real_segment(client):
    body = client.audio.transcriptions.create(
        model="whisper-1",
        file=clip(),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
        language="zh",
        temperature=0,
    )
    assert body.language == "zh" and body.duration == pytest.approx(CLIP_S, abs=0.01)
    (segment,) = body.segments
    assert segment.text == body.text and (segment.start, segment.end) == (0.0, pytest.approx(CLIP_S))
    assert segment.tokens and segment.seek == 0 and segment.temperature == 0.0
    assert -30 < segment.avg_logprob < 0  # the decoder's own: a random model is unsure, never certain
    assert 0.0 <= segment.no_speech_prob <= 1.0
    assert segment.compression_ratio > 0
    plain = client.audio.transcriptions.create(  # curl's -F timestamp_granularities=segment, without []
        model="whisper-1",
        file=clip(),
        response_format="verbose_json",
        extra_body={"timestamp_granularities": "segment"},
    )
    assert plain.segments[0].avg_logprob == segment.avg_logprob


def test_long_audio_gives_one_segment_per_window_in_srt_and_vtt(client):
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=clip(35.0), response_format="verbose_json"
    )
    assert [(s.start, s.end) for s in verbose.segments] == [(0.0, 30.0), (30.0, 35.0)]
    srt = client.audio.transcriptions.create(model="whisper-1", file=clip(35.0), response_format="srt")
    cues = srt.strip().split("\n\n")
    assert [c.split("\n")[:2] for c in cues] == [
        ["1", "00:00:00,000 --> 00:00:30,000"],
        ["2", "00:00:30,000 --> 00:00:35,000"],
    ]
    assert [c.split("\n", 2)[2] for c in cues] == [s.text.strip() for s in verbose.segments]
    vtt = client.audio.transcriptions.create(model="whisper-1", file=clip(35.0), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:30.000\n")
    assert "\n00:00:30.000 --> 00:00:35.000\n" in vtt


def test_stream_sends_openais_delta_and_done_events(client):
    expected = client.audio.transcriptions.create(model="whisper-1", file=clip()).text
    events = list(client.audio.transcriptions.create(model="whisper-1", file=clip(), stream=True))
    assert [type(e).__name__ for e in events] == ["TranscriptionTextDeltaEvent", "TranscriptionTextDoneEvent"]
    assert events[0].type == "transcript.text.delta" and events[0].delta == expected
    assert events[-1].type == "transcript.text.done" and events[-1].text == expected


def test_stream_of_a_long_recording_has_a_delta_per_window(client):
    events = list(client.audio.transcriptions.create(model="p1", file=clip(35.0), stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) == 2 and events[-1].type == "transcript.text.done"


def bad_request(call) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    error = info.value.body
    assert set(error) >= {"message", "type", "param", "code"}  # OpenAI's error object
    assert error["type"] == "invalid_request_error"
    return info.value


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"language": "en"}, "language", "unsupported_language"),
        ({"prompt": "我想喝水"}, "prompt", "invalid_value"),
        ({"temperature": 0.4}, "temperature", "invalid_value"),
        ({"response_format": "srt", "stream": True}, "stream", "invalid_value"),
        ({"timestamp_granularities": ["word"], "response_format": "verbose_json"}, None, None),
        ({"timestamp_granularities": ["segment"]}, "timestamp_granularities", "invalid_value"),
        ({"include": ["logprobs"]}, "include[]", "invalid_value"),
        ({"extra_body": {"beam": "4"}}, "beam", "unknown_parameter"),
    ],
)
def test_what_a_personal_model_cannot_do_is_refused_in_openais_shape(client, kwargs, param, code):
    error = bad_request(lambda: client.audio.transcriptions.create(model="whisper-1", file=clip(), **kwargs))
    body = error.body
    assert body["message"] and body["hint"]
    if param is not None:
        assert body["param"] == param and body["code"] == code
    if param == "language":
        assert "p1" in body["message"] and "'zh'" in body["message"]
    if code == "unknown_parameter":
        assert body["message"] == "Unknown parameter: 'beam'."


def test_unknown_patient_and_format(client):
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="nobody", file=clip())
    error = bad_request(
        lambda: client.audio.transcriptions.create(model="p1", file=clip(), response_format="xml")
    )
    assert error.body["code"] == "unsupported_response_format" and "srt" in error.body["hint"]


def test_two_patients_list_no_alias_and_a_token_guards_the_list(tmp_path, tiny_bundle):
    from resonance.runtime.device_config import load_device_config
    from resonance.runtime.models import ModelRegistry
    from resonance.runtime.server import ServerSettings, create_app

    models = tmp_path / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    copy_bundle(tiny_bundle, models, "p2")
    config = load_device_config(write_config(tmp_path / "test.yaml"))
    app = create_app(ModelRegistry(models, config), config, ServerSettings(auth_token="secret"))
    web = app.test_client()
    assert web.get("/v1/models").status_code == 401
    listed = web.get("/v1/models", headers={"Authorization": "Bearer secret"}).json
    assert [m["id"] for m in listed["data"]] == ["p1", "p2"]  # no whisper-1: it would not say who
    assert web.get("/v1/models/p2").status_code == 401
    one = web.get("/v1/models/p2", headers={"Authorization": "Bearer secret"})
    assert one.status_code == 200 and one.json == listed["data"][1]
    alias = web.get("/v1/models/whisper-1", headers={"Authorization": "Bearer secret"})
    assert alias.status_code == 404 and alias.json["error"]["code"] == "model_not_found"
    assert "2 patients" in alias.json["error"]["hint"]  # as the transcription endpoint refuses it below
    form = {"file": (io.BytesIO(wav(tone(1.0))), "a.wav"), "model": "whisper-1"}
    refused = web.post("/v1/audio/transcriptions", data=form, headers={"Authorization": "Bearer secret"})
    assert refused.status_code == 400 and re.search(r"2 patients", refused.json["error"]["message"])
