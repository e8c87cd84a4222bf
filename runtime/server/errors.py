"""Errors as HTTP replies: a real status and ``{"error": {"message", "hint", "code", "type"}}``, never 200."""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple, Type

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from resonance.errors import AudioError, ResonanceError
from resonance.runtime.models import InvalidPatientId, UnknownPatient
from resonance.runtime.server.slots import Busy

log = logging.getLogger(__name__)


class ApiError(ResonanceError):
    """A request the server refuses, with its HTTP status and a stable machine-readable code."""

    def __init__(
        self, status: int, code: str, message: str, hint: str = "", headers: Optional[Dict[str, str]] = None
    ):
        super().__init__(message, hint)
        self.status = status
        self.code = code
        self.headers = headers or {}


# The runtime's own errors -> (HTTP status, code); the first match wins, so subclasses come before their bases.
STATUS_OF: Tuple[Tuple[Type[ResonanceError], int, str], ...] = (
    (UnknownPatient, 404, "unknown_patient"),
    (InvalidPatientId, 400, "invalid_patient"),
    (AudioError, 400, "bad_audio"),
    (Busy, 503, "busy"),
    (ResonanceError, 400, "bad_request"),
)


def error_response(
    status: int, code: str, message: str, hint: str = "", headers: Optional[Dict[str, str]] = None
) -> Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"  # OpenAI clients read `type`
    response = jsonify({"error": {"message": message, "hint": hint, "code": code, "type": kind}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask, max_upload_mb: float) -> None:
    @app.errorhandler(ResonanceError)
    def _resonance_error(exc: ResonanceError) -> Response:
        if isinstance(exc, ApiError):
            return error_response(exc.status, exc.code, exc.message, exc.hint, exc.headers)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Busy) else None
        status, code = next((s, c) for kind, s, c in STATUS_OF if isinstance(exc, kind))
        return error_response(status, code, exc.message, exc.hint, headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return error_response(
                413,
                "too_large",
                f"the upload is larger than this server's limit of {max_upload_mb:g} MB",
                "send a shorter recording, or 16 kHz mono 16-bit WAV; the limit is max_upload_mb in the device config",
            )
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
