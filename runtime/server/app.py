"""The Flask app factory: it only translates HTTP to ``Transcriber.transcribe`` and back.

No serving concerns here (sockets, TLS, threads and what is refused before a body is read belong to the
gate and the listener): the app is plain WSGI, and works on its own too (Flask's test client).
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
from resonance.runtime.server.errors import register_error_handlers, unauthorized_error
from resonance.runtime.server.feedback import feedback
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
    def _check_auth() -> None:
        g.started = time.perf_counter()
        g.log_fields = {}
        header = request.headers.get("Authorization", "")
        # The gate checked this before the body was read; checked again for the app on its own (tests).
        if not is_open_path(request.path) and not authorized(header, settings.auth_token):
            raise unauthorized_error(header)

    @app.after_request
    def _log_request(response: Response) -> Response:
        elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        fields = " ".join(f"{k}={v}" for k, v in g.get("log_fields", {}).items())
        log.info("%s %s %d %.0fms %s", request.method, request.path, response.status_code, elapsed_ms, fields)
        return response

    register_error_handlers(app, device_config.max_upload_mb)
    for blueprint in (api, openai, feedback, page):
        app.register_blueprint(blueprint)
    return app
