"""An HTTP upload -> checked audio -> a transcription on a slot: what both transcription endpoints share."""

from __future__ import annotations

import io
import logging
import time
from typing import TYPE_CHECKING, Any, Tuple

from flask import Request, g, request

from resonance.audio import AudioTooLong, load_audio
from resonance.constants import SAMPLE_RATE
from resonance.runtime.models import LoadedBundle
from resonance.runtime.server.context import server_context
from resonance.runtime.server.errors import FORM_PARTS_LIMIT, ApiError
from resonance.runtime.server.slots import SLOT_HELD

if TYPE_CHECKING:  # the transcriber (numpy, onnxruntime) loads with the first bundle
    import numpy as np

    from resonance.runtime.transcriber import TranscriptionResult


log = logging.getLogger(__name__)

MULTIPART_HINT = "send the recording as a multipart form field named 'file' (curl -F file=@clip.wav ...)"


class InMemoryRequest(Request):
    """Werkzeug spools uploads over 500 KB to a temporary file; keep audio in RAM (size is capped anyway).

    The body cap (max_upload_mb) is the memory bound, so werkzeug's own 500 KB form-field limit is off: it
    also bounds its parser's buffer, and a recording with 500 KB without a newline byte (16 s of digital
    silence) was refused as a "form field larger than 25 MB". Each handler checks its own fields.
    """

    max_form_memory_size = None
    max_form_parts = FORM_PARTS_LIMIT

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def read_upload() -> bytes:
    """The bytes of the multipart field ``file`` of the current request."""
    if request.mimetype != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected a multipart/form-data upload, got '{request.mimetype or 'no content type'}'",
            MULTIPART_HINT,
        )
    upload = request.files.get("file")
    if upload is None:
        others = sorted(set(request.files) | set(request.form))
        got = f" (got field(s) {others})" if others else ""
        raise ApiError(400, "missing_file", f"no form field 'file' in the upload{got}", MULTIPART_HINT)
    return upload.read()


def transcribe_upload(
    bundle: LoadedBundle, data: bytes, endpoint: str, mode: str = "free"
) -> TranscriptionResult:
    """Decode ``data``, check its length, transcribe it on a slot (Busy when none frees up), keep it if the
    caregiver asked (retention), and note what the request log shows.

    Decoding runs on the slot too, within the length limit: a small compressed file can decode to a lot of
    audio.
    """
    context = server_context()
    g.log_fields.update(patient=bundle.patient, bytes=len(data))
    limit_s = context.device_config.max_audio_seconds

    def decode_and_transcribe() -> Tuple[np.ndarray, TranscriptionResult]:
        audio = decode_upload(data, limit_s)
        return audio, bundle.transcriber.transcribe(audio, mode=mode)

    audio, result = context.slots.run(decode_and_transcribe, held=request.environ.get(SLOT_HELD, False))
    g.log_fields["audio_s"] = f"{audio.size / SAMPLE_RATE:.2f}"
    g.log_fields["text_len"] = len(result.text)
    if context.settings.log_transcripts:
        g.log_fields["text"] = repr(result.text)
    if context.retention is not None:
        record: Any = {
            **result.to_json(),
            "patient": bundle.patient,
            "endpoint": endpoint,
            "received": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model_created": bundle.manifest.created,  # which export of the patient's model heard it
        }
        context.retention.save_or_log(bundle.patient, audio, record)
    return result


def decode_on_slot(data: bytes) -> np.ndarray:
    """The uploaded recording as 16 kHz mono float32, decoded on a transcription slot (the request's own when
    the gate gave it one), within the device's length limit: what /feedback keeps."""
    context = server_context()
    g.log_fields["bytes"] = len(data)
    limit_s = context.device_config.max_audio_seconds
    audio = context.slots.run(
        lambda: decode_upload(data, limit_s), held=request.environ.get(SLOT_HELD, False)
    )
    g.log_fields["audio_s"] = f"{audio.size / SAMPLE_RATE:.2f}"
    return audio


def decode_upload(data: bytes, limit_s: float) -> np.ndarray:
    """The upload as 16 kHz mono, never decoding more than ``limit_s`` (+1 s) of it; 400/413 otherwise."""
    try:
        audio = load_audio(data, SAMPLE_RATE, max_seconds=limit_s)  # AudioError -> 400
    except AudioTooLong as exc:
        raise ApiError(
            413,
            "audio_too_long",
            f"{exc.message} (this server accepts up to {limit_s:g} s)",
            "send one short phrase per request (max_audio_seconds in the device config)",
        ) from exc
    if audio.size == 0:
        raise ApiError(
            400,
            "empty_audio",
            "the recording holds no audio (a file header without samples)",
            "record again and send the file once the recording has stopped",
        )
    return audio
