"""``POST /feedback``: the caregiver confirmed (✓) or corrected (✗) a result on the page; with
``serve --collect DIR`` the recording is kept as training data for that patient (runtime/collect.py).

Multipart fields: ``file`` (the recording the page sent to /transcribe), ``text`` (the right phrase) and
``patient``. Refused with a 4xx JSON error, and nothing written, when collection is off (403, before the body
is read), the patient is unknown (404), there is no audio (400), the text is empty or too long (400), or the
clip is silent or too short to train on (422). It needs the same token as /transcribe.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from resonance.runtime.collect import check_text
from resonance.runtime.server.context import server_context
from resonance.runtime.server.errors import ApiError
from resonance.runtime.server.uploads import decode_on_slot, read_upload

feedback = Blueprint("feedback", __name__)


@feedback.post("/feedback")
def post_feedback() -> Response:
    context = server_context()
    if context.collector is None:
        raise ApiError(
            403,
            "collection_off",
            "this server does not keep corrections",
            "start it with `resonance serve --collect DIR` to keep confirmed recordings for training",
        )
    text = check_text(request.form.get("text"))  # before decoding: a bad form costs no audio work
    bundle = context.registry.get(request.form.get("patient") or None)
    g.log_fields["patient"] = bundle.patient
    audio = decode_on_slot(read_upload())
    entry = context.collector.add(bundle.patient, audio, text)
    g.log_fields.update(kept=entry["audio"].rsplit("/", 1)[-1][:4], text_len=len(text))
    response = jsonify(saved=True, patient=bundle.patient, **entry)
    response.status_code = 201
    return response
