"""The LAN API the caregiver's app calls: a Flask app over one Transcriber per patient, behind an ASGI gate
served by uvicorn.

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
                                  (json, text, srt, vtt, verbose_json), ``stream`` (server-sent events)
  GET  /v1/models                 the patients as OpenAI models (+ ``whisper-1`` when there is one)
  GET  /v1/models/{id}            one of them (404 ``model_not_found`` for an id the list lacks)
  POST /v1/audio/translations     refused (404 ``translation_not_supported``): a model transcribes its language
  POST /feedback                  ``file`` + ``text`` + ``patient``: the right text of a recording, kept as
                                  training data with ``serve --collect DIR`` (403 without it)

Every error is a real HTTP status with ``{"error": {"message", "hint", "code", "type"}}``. What a hostile
LAN may send is refused from the headers alone, before a body byte is read (gate.py): a Host that is not this
machine's (DNS rebinding), a browser Origin other than the server's own page (CSRF), a missing token, a
Content-Length over ``max_upload_mb`` (413); audio requests then wait for one of ``max_concurrent_requests``
slots (503 + Retry-After after ``queue_timeout_s`` from arrival) and are read, decoded and transcribed on it.
Audio lives only in memory: uploads are parsed into BytesIO (never a temp file); nothing is written to disk
unless the caregiver turns on ``retain_dir`` (runtime/retention.py). Logs carry transcript lengths, not
transcripts, unless ``log_transcripts`` is on, and every logged field is escaped (resonance/logsafe.py).

One job per module:
  app.py               the app factory: request hooks (auth, request log), error handlers, the blueprints
  api.py               /health, /patients, /transcribe (the guide's endpoint)
  openai.py            /v1/models, /v1/audio/transcriptions, its response formats and refusals
  feedback.py          /feedback: a result the caregiver confirmed or corrected, kept with --collect
  page.py              the caregiver's web page and its security headers
  uploads.py           an HTTP upload -> checked audio -> a transcription on a slot (+ retention)
  errors.py            ApiError, the JSON error body and the error -> HTTP status table
  auth.py              the bearer token: its file, and the check (framework-free)
  hosts.py             the Host allow-list and the same-origin check (framework-free)
  slots.py             TranscriptionSlots: at most N transcriptions at once on N threads, for every front end
  context.py           ServerSettings and what one app shares with its requests
  gate.py              the ASGI gate: header checks, slots, body caps and timeouts, then the app via a2wsgi
  listener.py          sockets bound first, uvicorn with a request-head deadline and a connection cap
  lan.py               LAN addresses, the QR code, the start banner
  tls.py               the local CA and the server certificate of HTTPS on the LAN (cryptography)
  wyoming.py           the Wyoming protocol (Home Assistant) beside HTTP: same registry, slots and limits
  run.py               serve(): bind, load the bundles, build app + gate, print the banner, run the listener
"""

from __future__ import annotations

from resonance.runtime.server.app import create_app
from resonance.runtime.server.auth import default_token_path, load_or_create_token
from resonance.runtime.server.context import ServerSettings
from resonance.runtime.server.gate import Gate
from resonance.runtime.server.hosts import HostPolicy
from resonance.runtime.server.lan import lan_addresses, qr_text, urls_for
from resonance.runtime.server.listener import Endpoint, Front
from resonance.runtime.server.run import serve
from resonance.runtime.server.slots import Busy, TranscriptionSlots

__all__ = [
    "Busy",
    "Endpoint",
    "Front",
    "Gate",
    "HostPolicy",
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
