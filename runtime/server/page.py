"""The caregiver's web page (runtime/static): record a phrase, see and hear what was meant, correct it.

It is an installable web app: a manifest and icons under /static/, and a service worker at /sw.js (a
worker controls only the paths under its own URL, so it is served from the root). /ca.crt is the local CA's
certificate, which a phone installs once to trust the server's HTTPS (runtime/server/tls.py): the
certificate only, never a key.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from resonance.runtime.server.context import server_context
from resonance.runtime.server.errors import ApiError
from resonance.runtime.server.tls import ca_certificate_pem

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"  # package data of resonance.runtime
# Types Python's mimetypes may not know (or, for .js, may know wrongly on an old system): browsers refuse a
# service worker or a module served as anything else.
MIME_TYPES = {".webmanifest": "application/manifest+json", ".js": "text/javascript"}
# The page loads nothing from elsewhere (works offline) and runs no inline script: say so to the browser.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded server serves its new page at once
}

page = Blueprint("page", __name__)


@page.get("/")
def index() -> Response:
    return send_from_directory(STATIC_DIR, "index.html")


@page.get("/sw.js")
def service_worker() -> Response:
    return static_file("sw.js")


@page.get("/ca.crt")
def ca_certificate() -> Response:
    tls = server_context().settings.tls
    pem = ca_certificate_pem(tls) if tls is not None else None
    if pem is None:
        raise ApiError(
            404,
            "no_local_ca",
            "this server has no certificate authority of its own to offer"
            + (
                " (it uses the certificate given with --cert)"
                if tls is not None
                else " (it serves plain http)"
            ),
            "nothing to install on the phone for this server",
        )
    # The type iOS opens as a profile and Android's installer takes; .crt is the name Android expects.
    response = Response(pem, mimetype="application/x-x509-ca-cert")
    response.headers["Content-Disposition"] = 'attachment; filename="resonance-ca.crt"'
    return response


@page.get("/static/<path:name>")
def static_file(name: str) -> Response:
    mimetype = MIME_TYPES.get(Path(name).suffix)
    return send_from_directory(STATIC_DIR, name, mimetype=mimetype)  # refuses '..' and absolute paths (404)


@page.after_request
def _page_headers(response: Response) -> Response:
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
