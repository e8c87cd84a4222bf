"""OpenAI's transcription endpoint, ``POST /v1/audio/transcriptions``, so OpenAI clients and tools work as is.

``model`` names the patient (``whisper-1`` or nothing: the only one); ``response_format`` picks a formatter
from :data:`RESPONSE_FORMATS`: a new format is one function and one entry there.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict

from flask import Blueprint, Response, jsonify, request

from resonance.runtime.server.context import server_context
from resonance.runtime.server.errors import ApiError
from resonance.runtime.server.uploads import read_upload, transcribe_upload

log = logging.getLogger(__name__)

OPENAI_DEFAULT_MODEL = "whisper-1"  # what OpenAI clients send by default: means "the default patient"

openai = Blueprint("openai", __name__)


def _text(result) -> Response:
    return Response(result.text + "\n", mimetype="text/plain")


def _json(result) -> Response:
    return jsonify(text=result.text)


def _verbose_json(result) -> Response:
    duration = round(result.duration_s, 3)
    segment = {
        "id": 0,
        "seek": 0,
        "start": 0.0,
        "end": duration,
        "text": result.text,
        "tokens": list(result.tokens),
        "temperature": 0.0,
        "no_speech_prob": result.no_speech_prob,
    }
    return jsonify(
        task="transcribe", language=result.language, duration=duration, text=result.text, segments=[segment]
    )


# response_format -> how a TranscriptionResult is written in it
RESPONSE_FORMATS: Dict[str, Callable[..., Response]] = {
    "json": _json,
    "text": _text,
    "verbose_json": _verbose_json,
}


@openai.post("/v1/audio/transcriptions")
def transcriptions() -> Response:
    upload = read_upload()
    response_format = request.form.get("response_format") or "json"
    formatter = RESPONSE_FORMATS.get(response_format)
    if formatter is None:
        raise ApiError(
            400,
            "unsupported_response_format",
            f"response_format '{response_format[:40]}' is not supported",
            f"use one of {', '.join(RESPONSE_FORMATS)}",
        )
    model = request.form.get("model") or ""
    bundle = server_context().registry.get(None if model in ("", OPENAI_DEFAULT_MODEL) else model)
    language = request.form.get("language")
    if language and language != bundle.manifest.language:
        # A personal model is fine-tuned for one language; honour it rather than fail the client.
        log.debug(
            "ignoring language=%r: patient %s's model transcribes %s",
            language,
            bundle.patient,
            bundle.manifest.language,
        )
    return formatter(transcribe_upload(bundle, upload, "/v1/audio/transcriptions"))
