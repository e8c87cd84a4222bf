"""The LAN API the caregiver's app calls: a Flask app over one Transcriber per patient, served by waitress.

Endpoints:
  GET  /                          the caregiver's web page (runtime/static: record or upload, see the text)
  GET  /health                    liveness, version, providers, number of patients (+ their ids if authorized)
  GET  /patients                  the patients this server has (id, base model, precision, metrics ...)
  POST /transcribe                multipart field ``file`` (+ optional ``patient``, ``mode``) -> {"text", ...}
                                  mode=both (default): text + the best known phrase ("phrase",
                                  "phrase_confidence", "phrases" = top-k [{text, confidence}],
                                  "phrase_rejected": "none of these"); mode=free: text only; mode=phrases:
                                  text = the accepted phrase or "" (runtime/phrases.py)
  POST /v1/audio/transcriptions   OpenAI-compatible: ``file``, ``model`` = patient id, ``response_format``

Every error is a real HTTP status with ``{"error": {"message", "hint", "code", "type"}}``. Explicit caps:
413 for bodies over ``max_upload_mb`` and audio over ``max_audio_seconds``; 503 + Retry-After when all
``max_concurrent_requests`` slots stay taken for ``queue_timeout_s``. Audio lives only in memory: uploads are
parsed into BytesIO (never a temp file) and waitress buffers bodies in RAM; nothing is written to disk
unless the caregiver turns on ``retain_dir`` (runtime/retention.py). Logs carry transcript lengths, not
transcripts, unless ``log_transcripts`` is on.

One job per module:
  app.py               the app factory: request hooks (auth, request log), error handlers, the blueprints
  api.py               /health, /patients, /transcribe (the guide's endpoint)
  openai.py            /v1/audio/transcriptions and its response formats
  page.py              the caregiver's web page and its security headers
  uploads.py           an HTTP upload -> checked audio -> a transcription on a slot (+ retention)
  errors.py            ApiError and the error -> HTTP status table
  auth.py              the bearer token: its file, and the check (framework-free)
  slots.py             TranscriptionSlots: at most N transcriptions at once, shared by every front end
  context.py           ServerSettings and what one app shares with its requests
  lan.py               LAN addresses, the QR code, the start banner
  run.py               serve(): load the bundles, build the app, print the banner, run the listener
  waitress_listener.py the HTTP listener (the only module that knows waitress)
"""

from __future__ import annotations

from resonance.runtime.server.app import create_app
from resonance.runtime.server.auth import default_token_path, load_or_create_token
from resonance.runtime.server.context import ServerSettings
from resonance.runtime.server.lan import lan_addresses, qr_text, urls_for
from resonance.runtime.server.run import serve
from resonance.runtime.server.slots import Busy, TranscriptionSlots

__all__ = [
    "Busy",
    "ServerSettings",
    "TranscriptionSlots",
    "create_app",
    "default_token_path",
    "lan_addresses",
    "load_or_create_token",
    "qr_text",
    "serve",
    "urls_for",
]
