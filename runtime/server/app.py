"""The Flask app factory: it only translates HTTP to ``Transcriber.transcribe`` and back.

No serving concerns here (threads, sockets, TLS belong to the listener): the same app runs under waitress
today and behind any other WSGI/ASGI front tomorrow.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from flask import Flask, Response, g, request

from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.models import ModelRegistry
from resonance.runtime.server.api import api
from resonance.runtime.server.auth import authorized, is_open_path
from resonance.runtime.server.context import EXTENSION, ServerContext, ServerSettings
from resonance.runtime.server.errors import error_response, register_error_handlers
from resonance.runtime.server.openai import openai
from resonance.runtime.server.page import page
from resonance.runtime.server.uploads import InMemoryRequest

log = logging.getLogger(__name__)


def create_app(
    registry: ModelRegistry, device_config: DeviceConfig, settings: Optional[ServerSettings] = None
) -> Flask:
    """The app that serves ``registry``'s patients within ``device_config``'s limits."""
    settings = settings or ServerSettings()
    app = Flask(__name__, static_folder=None)  # the page's files are served by page.static_file
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = device_config.max_upload_bytes
    app.json.ensure_ascii = False  # Chinese transcripts as UTF-8, not \uXXXX
    app.extensions[EXTENSION] = ServerContext.create(registry, device_config, settings)

    @app.before_request
    def _check_auth() -> Optional[Response]:
        g.started = time.perf_counter()
        g.log_fields = {}
        header = request.headers.get("Authorization", "")
        if is_open_path(request.path) or authorized(header, settings.auth_token):
            return None
        return error_response(
            401,
            "unauthorized",
            "missing or wrong access token" if header else "this server needs an access token",
            "send the header 'Authorization: Bearer <token>' with the token `resonance serve --auth` printed",
            {"WWW-Authenticate": 'Bearer realm="resonance"'},
        )

    @app.after_request
    def _log_request(response: Response) -> Response:
        elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        fields = " ".join(f"{k}={v}" for k, v in g.get("log_fields", {}).items())
        log.info("%s %s %d %.0fms %s", request.method, request.path, response.status_code, elapsed_ms, fields)
        return response

    register_error_handlers(app, device_config.max_upload_mb)
    for blueprint in (api, openai, page):
        app.register_blueprint(blueprint)
    return app
