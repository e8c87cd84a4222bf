"""Errors as HTTP replies: a real status and ``{"error": {"message", "hint", "code", "type"}}``, never 200."""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple, Type

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from resonance.errors import AudioError, ResonanceError
from resonance.runtime.bundle import BundleError
from resonance.runtime.collect import ClipNotKept, CollectionDamaged, CollectionFull, InvalidCorrection
from resonance.runtime.models import InvalidPatientId, UnknownPatient
from resonance.runtime.server.slots import Busy

log = logging.getLogger(__name__)

FORM_PARTS_LIMIT = 16  # fields in one multipart form (the API's forms have at most 5)


class ApiError(ResonanceError):
    """A request the server refuses, with its HTTP status and a stable machine-readable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        hint: str = "",
        headers: Optional[Dict[str, str]] = None,
        param: Optional[str] = None,
    ):
        super().__init__(message, hint)
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.param = param  # the request field at fault, as OpenAI's errors name it


# The runtime's own errors -> (HTTP status, code); the first match wins, so subclasses come before their bases.
STATUS_OF: Tuple[Tuple[Type[ResonanceError], int, str], ...] = (
    (UnknownPatient, 404, "unknown_patient"),
    (InvalidPatientId, 400, "invalid_patient"),
    (AudioError, 400, "bad_audio"),
    (Busy, 503, "busy"),
    (BundleError, 503, "model_unavailable"),  # a patient's bundle that failed to load on first use
    (InvalidCorrection, 400, "bad_text"),
    (ClipNotKept, 422, "not_kept"),
    (CollectionFull, 507, "collection_full"),
    (CollectionDamaged, 409, "collection_damaged"),
    (ResonanceError, 400, "bad_request"),
)


def unauthorized_error(authorization_header: str) -> ApiError:
    """401 for a protected route without the right bearer token."""
    return ApiError(
        401,
        "unauthorized",
        "missing or wrong access token" if authorization_header else "this server needs an access token",
        "send the header 'Authorization: Bearer <token>' with the token in the file `resonance serve --auth` "
        "named",
        {"WWW-Authenticate": 'Bearer realm="resonance"'},
    )


def too_large_error(max_upload_mb: float) -> ApiError:
    """413 for an upload over the device's cap (announced by Content-Length, or counted as it arrives)."""
    return ApiError(
        413,
        "too_large",
        f"the upload is larger than this server's limit of {max_upload_mb:g} MB",
        "send a shorter recording, or 16 kHz mono 16-bit WAV; the limit is max_upload_mb in the device config",
    )


def error_body(
    status: int, code: str, message: str, hint: str = "", param: Optional[str] = None
) -> Dict[str, Dict[str, Optional[str]]]:
    """The JSON of every error reply, from Flask or from the gate that answers before Flask sees a request:
    OpenAI's error object (message, type, param, code) with our hint beside it."""
    kind = "server_error" if status >= 500 else "invalid_request_error"  # OpenAI clients read `type`
    return {"error": {"message": message, "hint": hint, "code": code, "type": kind, "param": param}}


def error_response(
    status: int,
    code: str,
    message: str,
    hint: str = "",
    headers: Optional[Dict[str, str]] = None,
    param: Optional[str] = None,
) -> Response:
    response = jsonify(error_body(status, code, message, hint, param))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask, max_upload_mb: float) -> None:
    @app.errorhandler(ResonanceError)
    def _resonance_error(exc: ResonanceError) -> Response:
        if isinstance(exc, ApiError):
            return error_response(exc.status, exc.code, exc.message, exc.hint, exc.headers, exc.param)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Busy) else None
        status, code = next((s, c) for kind, s, c in STATUS_OF if isinstance(exc, kind))
        return error_response(status, code, exc.message, exc.hint, headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            length = request.content_length
            if length is not None and length <= request.max_content_length:
                # The upload fits the cap: werkzeug refused the form's number of parts.
                return error_response(
                    413,
                    "too_many_parts",
                    f"the form has more than {FORM_PARTS_LIMIT} parts",
                    "send the recording as the field 'file', and only the fields the API names",
                )
            error = too_large_error(max_upload_mb)
            return error_response(error.status, error.code, error.message, error.hint)
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(status, code, exc.description or exc.name or "error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # A bug or a runtime failure (e.g. onnxruntime out of memory): answer 500, keep the traceback in the log,
        # and keep serving the other requests.
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(
            500, "internal_error", f"internal error: {type(exc).__name__}", "see the server's log; try again"
        )
