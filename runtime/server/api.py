"""The guide's endpoints: /health, /patients and /transcribe (the caregiver app's own API)."""

from __future__ import annotations

import time
from typing import Any, Dict, List

from flask import Blueprint, Response, g, jsonify, request

from resonance import __version__
from resonance.runtime.models import LoadedBundle
from resonance.runtime.phrases import MODES, NO_PHRASES
from resonance.runtime.server.auth import authorized
from resonance.runtime.server.context import server_context
from resonance.runtime.server.errors import ApiError
from resonance.runtime.server.uploads import read_upload, transcribe_upload
from resonance.system import rss_mb

DEFAULT_MODE = "both"  # /transcribe: the free text and the best known phrase (one encoder pass)

api = Blueprint("api", __name__)


@api.get("/health")
def health() -> Response:
    context = server_context()
    providers: List[str] = []
    for bundle in context.registry.bundles():
        for name in getattr(bundle.transcriber, "providers", ()):
            if name not in providers:
                providers.append(name)
    body = dict(
        status="ok",
        version=__version__,
        device=context.device_config.name,
        providers=providers,
        patients=len(context.registry.patients),
        rss_mb=rss_mb(),
        retaining=context.retention is not None,  # whether recordings are kept on disk (serve --retain)
    )
    # /health is open with --auth too (liveness): the ids only for those who may see them.
    if authorized(request.headers.get("Authorization", ""), context.settings.auth_token):
        body["patient_ids"] = sorted(context.registry.patients)
    return jsonify(**body)


@api.get("/patients")
def patients() -> Response:
    return jsonify([describe(bundle) for bundle in server_context().registry.bundles()])


@api.post("/transcribe")
def transcribe() -> Response:
    mode = request.form.get("mode") or DEFAULT_MODE
    if mode not in MODES:
        raise ApiError(
            400, "bad_mode", f"mode '{mode[:40]}' is not supported", f"use one of {', '.join(MODES)}"
        )
    upload = read_upload()
    bundle = server_context().registry.get(request.form.get("patient") or None)
    result = transcribe_upload(bundle, upload, "/transcribe", mode)
    reply = result.to_json()
    if result.phrases is not None and result.phrases.reason == NO_PHRASES:
        reply["warning"] = (
            f"patient {bundle.patient} has no phrase list: free transcription only "
            "(add phrases with `resonance phrases add --bundle ...`)"
        )
    reply["patient"] = bundle.patient
    reply["latency_ms"] = round(
        (time.perf_counter() - g.started) * 1000, 1
    )  # the whole request, upload included
    return jsonify(reply)


def describe(bundle: LoadedBundle) -> Dict[str, Any]:
    """A patient as GET /patients lists it."""
    manifest = bundle.manifest
    metrics = {k: v for k, v in (manifest.metrics or {}).items() if isinstance(v, (int, float, str, bool))}
    return {
        "id": bundle.patient,
        "base_model": manifest.base_model,
        "precision": manifest.precision,
        "language": manifest.language,
        "created": manifest.created,
        "metrics": metrics,  # scalar metrics only (CER before/after ...), not per-phrase details
        "n_phrases": len(manifest.phrases or []),
    }
