"""The guide's endpoints: /health, /patients and /transcribe (the caregiver app's own API)."""

from __future__ import annotations

import time
from typing import Any, Dict, List

from flask import Blueprint, Response, g, jsonify, request

from resonance import __version__
from resonance.runtime.bundle import base_model_name, looks_like_path
from resonance.runtime.models import BundleEntry
from resonance.runtime.phrases import MODES, NO_PHRASES
from resonance.runtime.server.auth import authorized
from resonance.runtime.server.context import server_context
from resonance.runtime.server.errors import ApiError
from resonance.runtime.server.uploads import read_upload, transcribe_upload
from resonance.system import rss_mb

MB = 1024 * 1024
DEFAULT_MODE = "both"  # /transcribe: the free text and the best known phrase (one encoder pass)

api = Blueprint("api", __name__)


@api.get("/health")
def health() -> Response:
    context = server_context()
    registry = context.registry
    loaded = registry.bundles()
    providers: List[str] = []
    for bundle in loaded:
        for name in getattr(bundle.transcriber, "providers", ()):
            if name not in providers:
                providers.append(name)
    models: Dict[str, Any] = {
        "budget_mb": round(registry.memory_budget_bytes / MB),  # 0: no limit (model_memory_mb)
        "loaded_mb": round(sum(b.model_bytes for b in loaded) / MB, 1),
        "loaded": len(loaded),
    }
    body = dict(
        status="ok",
        version=__version__,
        device=context.device_config.name,
        providers=providers,
        patients=len(registry.patients),
        models=models,
        rss_mb=rss_mb(),
        retaining=context.retention is not None,  # whether recordings are kept on disk (serve --retain)
        # whether POST /feedback keeps corrections (serve --collect)
        collecting=context.collector is not None,
        # where the page is served over https (the page, opened over plain http, links there), and whether
        # /ca.crt offers the local CA that a phone trusts once
        https_port=context.settings.https_port,
        ca_certificate=bool(context.settings.tls and context.settings.tls.ca_file),
    )
    # /health is open with --auth too (liveness): the ids only for those who may see them.
    if authorized(request.headers.get("Authorization", ""), context.settings.auth_token):
        body["patient_ids"] = sorted(registry.patients)
        models["loaded_ids"] = [b.patient for b in loaded]
    return jsonify(**body)


@api.get("/patients")
def patients() -> Response:
    registry = server_context().registry
    loaded = {b.patient for b in registry.bundles()}
    return jsonify([describe(entry, entry.patient in loaded) for entry in registry.entries()])


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


def describe(entry: BundleEntry, loaded: bool) -> Dict[str, Any]:
    """A patient as GET /patients lists it: what the model is, never where this device keeps things."""
    manifest = entry.manifest
    board = entry.board  # re-read on a caregiver's edit without reloading the model (runtime/models.py)
    metrics = {
        k: v
        for k, v in (manifest.metrics or {}).items()
        if isinstance(v, (int, float, bool)) or (isinstance(v, str) and not looks_like_path(v))
    }
    return {
        "id": manifest.patient,
        "base_model": public_model_name(manifest.base_model),
        "precision": manifest.precision,
        "language": manifest.language,
        "created": manifest.created,
        "metrics": metrics,  # scalar metrics only (CER before/after ...), not per-phrase details
        "n_phrases": len(board),
        "loaded": loaded,  # in memory now; else it loads on its first request (model_memory_mb)
        "phrases": list(board.texts),  # the phrase board: the page's grid of phrases to tap, in its order
        # The same phrases with where each comes from: "recorded" (the model trained on recordings of it) or
        # "added" by the caregiver (runtime/board.py); the shape of `resonance phrases list --json`.
        "board": board.to_json(),
    }


def public_model_name(name: str) -> str:
    """A base model as clients may see it: a hub id or ``pypi:`` name as is, a local folder by its name."""
    return base_model_name(name) if looks_like_path(name) else name
