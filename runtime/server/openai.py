"""OpenAI's transcription API, so OpenAI clients and tools work as is: ``GET /v1/models``,
``GET /v1/models/{id}`` and ``POST /v1/audio/transcriptions`` (``POST /v1/audio/translations`` is refused).

``model`` names the patient (``whisper-1`` or nothing: the only one); ``response_format`` picks a formatter
from :data:`RESPONSE_FORMATS` (a new format is one function and one entry there); ``stream=true`` answers
with the server-sent events of OpenAI's transcription stream (``transcript.text.delta`` per window, then
``transcript.text.done``: the events the openai client's ``TranscriptionStreamEvent`` types define).

What a personal model cannot do is refused with OpenAI's error shape, never silently ignored: another
``language`` than the model's, a ``prompt`` (the models are fine-tuned without Whisper's previous-text prompt,
and on speaker A a prompt made every phrase it did not name worse: see ``transcriptions``),
``temperature`` above 0 (decoding is deterministic: greedy or beam search), word timestamps, and any
parameter OpenAI does not define (``unknown_parameter``, as OpenAI answers).
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence

from flask import Blueprint, Response, jsonify, request

from resonance.runtime.server.context import server_context
from resonance.runtime.server.errors import ApiError
from resonance.runtime.server.uploads import read_upload, transcribe_upload

if TYPE_CHECKING:  # the transcriber (numpy, onnxruntime) loads with the first bundle
    from resonance.runtime.transcriber import Segment, TranscriptionResult

log = logging.getLogger(__name__)

OPENAI_DEFAULT_MODEL = "whisper-1"  # what OpenAI clients send by default: means "the only patient"
OWNED_BY = "resonance"  # GET /v1/models: who made the models (OpenAI's own say "openai" or "system")

# The form fields of OpenAI's transcription request (openai-python's TranscriptionCreateParams; arrays are
# sent as "name[]"). Anything else is OpenAI's 400 "unknown_parameter".
KNOWN_FIELDS = frozenset(
    {
        "file",
        "model",
        "language",
        "prompt",
        "response_format",
        "temperature",
        "timestamp_granularities[]",
        "timestamp_granularities",  # curl users often leave out the brackets
        "stream",
        "include[]",
        "chunking_strategy",
        "keywords[]",
        "known_speaker_names[]",
        "known_speaker_references[]",
        "languages[]",
    }
)
# Fields OpenAI defines for its newer models that a Whisper model has no use for: refused by name.
UNSUPPORTED_FIELDS = {
    "include[]": "logprobs are not returned (verbose_json has each segment's avg_logprob)",
    "chunking_strategy": "each recording is transcribed whole, in 30 s windows",
    "keywords[]": "use the patient's phrase board instead (POST /transcribe mode=phrases)",
    "known_speaker_names[]": "there is no diarization: a model hears one person",
    "known_speaker_references[]": "there is no diarization: a model hears one person",
    "languages[]": "a personal model transcribes one language: GET /v1/models says which",
}
STREAM_FORMATS = ("json", "text")  # OpenAI streams only these; the others are files written at the end

openai = Blueprint("openai", __name__)


# -- response formats ------------------------------------------------------------------------------------------------


def _text(result: TranscriptionResult) -> Response:
    return Response(result.text + "\n", mimetype="text/plain")


def _json(result: TranscriptionResult) -> Response:
    return jsonify(text=result.text, usage=_usage(result))


def _verbose_json(result: TranscriptionResult) -> Response:
    return jsonify(
        task="transcribe",
        language=result.language,
        duration=round(result.duration_s, 3),
        text=result.text,
        segments=[_segment_json(i, s) for i, s in enumerate(result.segments)],
        usage=_usage(result),
    )


def _srt(result: TranscriptionResult) -> Response:
    cues = [
        f"{i}\n{_timestamp(s.start_s, ',')} --> {_timestamp(s.end_s, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(result.segments, start=1)
    ]
    return Response("\n".join(cues), mimetype="application/x-subrip")


def _vtt(result: TranscriptionResult) -> Response:
    cues = [
        f"{_timestamp(s.start_s, '.')} --> {_timestamp(s.end_s, '.')}\n{s.text.strip()}\n"
        for s in result.segments
    ]
    return Response("\n".join(["WEBVTT\n", *cues]), mimetype="text/vtt")


# response_format -> how a TranscriptionResult is written in it
RESPONSE_FORMATS: Dict[str, Callable[[TranscriptionResult], Response]] = {
    "json": _json,
    "text": _text,
    "verbose_json": _verbose_json,
    "srt": _srt,
    "vtt": _vtt,
}


def _usage(result: TranscriptionResult) -> Dict[str, Any]:
    return {"type": "duration", "seconds": round(result.duration_s, 3)}  # OpenAI bills whisper-1 by duration


def _segment_json(index: int, segment: Segment) -> Dict[str, Any]:
    """A segment as OpenAI's TranscriptionSegment: seek is the window's offset in mel frames (10 ms)."""
    return {
        "id": index,
        "seek": round(segment.start_s * 100),
        "start": round(segment.start_s, 3),
        "end": round(segment.end_s, 3),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": 0.0,
        "avg_logprob": round(segment.avg_logprob, 6),
        "compression_ratio": round(compression_ratio(segment.text), 6),
        "no_speech_prob": round(segment.no_speech_prob, 6),
    }


def compression_ratio(text: str) -> float:
    """openai/whisper's gzip compression ratio of a text: above ~2.4 the decoder was looping."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _timestamp(seconds: float, decimal: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def _stream(result: TranscriptionResult) -> Response:
    """OpenAI's transcription stream: a ``transcript.text.delta`` per window, then ``transcript.text.done``.

    The deltas are sent once the recording is transcribed (a phrase takes well under a second here), so a
    streaming client gets the same events as from OpenAI, without waiting for a live decode."""
    events: List[Dict[str, Any]] = [
        {"type": "transcript.text.delta", "delta": s.text} for s in result.segments
    ]
    if not events or result.mode != "free":
        events = [{"type": "transcript.text.delta", "delta": result.text}]
    events.append({"type": "transcript.text.done", "text": result.text})

    def body() -> Iterator[str]:
        for event in events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

    return Response(body(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


# -- the request ---------------------------------------------------------------------------------------------------


def invalid(param: str, message: str, hint: str = "", code: str = "invalid_value") -> ApiError:
    """A 400 in OpenAI's shape: ``param`` names the field (OpenAI clients show it)."""
    return ApiError(400, code, message, hint, param=param)


def check_fields(names: Sequence[str]) -> None:
    """OpenAI's answer to a field it does not define, then ours to the ones a personal model cannot use."""
    for name in names:
        if name not in KNOWN_FIELDS:
            raise invalid(
                name[:60],
                f"Unknown parameter: '{name[:60]}'.",
                "the fields are file, model, language, prompt, response_format, temperature, "
                "timestamp_granularities[] and stream",
                code="unknown_parameter",
            )
        if name in UNSUPPORTED_FIELDS:
            raise invalid(name, f"'{name}' is not supported by this server", UNSUPPORTED_FIELDS[name])


def parse_temperature(value: Optional[str]) -> None:
    if value is None or value == "":
        return
    try:
        temperature = float(value)
    except ValueError:
        raise invalid("temperature", f"temperature '{value[:20]}' is not a number", "use 0") from None
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 1.0:
        raise invalid("temperature", f"temperature must be between 0 and 1, got {value[:20]}", "use 0")
    if temperature > 0:
        raise invalid(
            "temperature",
            f"temperature {temperature:g} is not supported: this server decodes deterministically "
            "(the most likely text), and sampling would only add errors to a personal model's answer",
            "leave temperature out, or send 0",
        )


def parse_stream(value: Optional[str]) -> bool:
    if value is None or value.lower() in ("", "false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise invalid("stream", f"stream must be true or false, got '{value[:20]}'", "use stream=true")


@openai.get("/v1/models")
def models() -> Response:
    """The patients as OpenAI models (``id`` = patient id), and ``whisper-1`` when there is only one."""
    return jsonify(object="list", data=_listed_models())


@openai.get("/v1/models/<model_id>")
def model(model_id: str) -> Response:
    """One model of the list (openai's ``client.models.retrieve``): exactly the ids a transcription takes."""
    found = next((m for m in _listed_models() if m["id"] == model_id), None)
    if found is None:
        raise ApiError(
            404,
            "model_not_found",
            f"The model '{model_id[:64]}' does not exist",
            _unknown_model_hint(model_id, len(server_context().registry.patients)),
            param="model",
        )
    return jsonify(found)


@openai.post("/v1/audio/translations")
def translations() -> Response:
    """OpenAI's translation into English: refused before the upload is read (a personal model cannot)."""
    languages = sorted({entry.manifest.language for entry in server_context().registry.entries()})
    spoken = f" ({', '.join(languages)})" if languages else ""
    raise ApiError(
        404,
        "translation_not_supported",
        "translation is not offered by this server: a personal model transcribes what the patient says, "
        f"in the language it was fine-tuned on{spoken}",
        "use POST /v1/audio/transcriptions (client.audio.transcriptions.create) for the text as spoken",
    )


def _listed_models() -> List[Dict[str, Any]]:
    """What GET /v1/models lists: ``whisper-1`` only when it names one patient, as transcriptions take it."""
    entries = server_context().registry.entries()
    data = [_model(entry.patient, entry.manifest.created) for entry in entries]
    if len(entries) == 1:
        data.append(_model(OPENAI_DEFAULT_MODEL, entries[0].manifest.created))
    return data


def _unknown_model_hint(model_id: str, patients: int) -> str:
    if model_id == OPENAI_DEFAULT_MODEL and patients > 1:  # listed for one patient only: here it names nobody
        return f"this server has {patients} patients: name one by its patient id (GET /v1/models lists them)"
    return "GET /v1/models lists the models: the patient ids, and whisper-1 when there is only one patient"


def _model(model_id: str, created: Any) -> Dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _epoch(created), "owned_by": OWNED_BY}


def _epoch(created: Any) -> int:
    """A manifest's ``created`` (ISO 8601) as Unix seconds, as OpenAI's model objects give it; 0 if unknown."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp())


@openai.post("/v1/audio/transcriptions")
def transcriptions() -> Response:
    form = request.form
    check_fields([*form.keys(), *(name for name in request.files if name != "file")])
    response_format = form.get("response_format") or "json"
    formatter = RESPONSE_FORMATS.get(response_format)
    if formatter is None:
        raise invalid(
            "response_format",
            f"response_format '{response_format[:40]}' is not supported",
            f"use one of {', '.join(RESPONSE_FORMATS)}",
            code="unsupported_response_format",
        )
    stream = parse_stream(form.get("stream"))
    if stream and response_format not in STREAM_FORMATS:
        raise invalid(
            "stream",
            f"stream=true is not supported with response_format '{response_format}'",
            f"stream with {' or '.join(STREAM_FORMATS)}, or leave stream out",
        )
    parse_temperature(form.get("temperature"))
    granularities = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    for granularity in granularities:
        if granularity != "segment":
            raise invalid(
                "timestamp_granularities",
                f"timestamp_granularities '{granularity[:20]}' is not supported",
                "only 'segment' (one per 30 s window); the segments are in response_format=verbose_json",
            )
    if granularities and response_format != "verbose_json":
        raise invalid(
            "timestamp_granularities",
            "timestamp_granularities needs response_format=verbose_json",
            "send response_format=verbose_json",
        )
    if form.get("prompt"):
        # Measured on speaker A's personal model (whisper-base + LoRA, 48 take2 clips, greedy): a prompt of 20
        # of the patient's phrases took CER 0.106 -> 0.130; the listed phrases improved (0.103 -> 0.046, what
        # the phrase board does without the cost) and every other phrase got worse (0.109 -> 0.186).
        raise invalid(
            "prompt",
            "prompt is not supported: a personal model is fine-tuned without Whisper's previous-text prompt, "
            "and on a patient's recordings a prompt made the phrases it does not name worse",
            "leave prompt out; to favour the patient's own phrases use the phrase board (POST /transcribe "
            "with mode=phrases or both)",
        )
    model = form.get("model") or ""
    bundle = server_context().registry.get(None if model in ("", OPENAI_DEFAULT_MODEL) else model)
    language = (form.get("language") or "").strip().lower()
    if language and language != bundle.manifest.language.lower():
        raise invalid(
            "language",
            f"patient {bundle.patient}'s model transcribes '{bundle.manifest.language}', not '{language[:20]}'",
            f"send language={bundle.manifest.language} or leave it out (GET /patients says each patient's language)",
            code="unsupported_language",
        )
    upload = read_upload()
    result = transcribe_upload(bundle, upload, "/v1/audio/transcriptions")
    return _stream(result) if stream else formatter(result)
