"""The caregiver's web page (runtime/static): record a phrase, see and hear what was meant, correct it.

It is an installable web app: a manifest and icons under /static/, and a service worker at /sw.js (a
worker controls only the paths under its own URL, so it is served from the root).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

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


@page.get("/static/<path:name>")
def static_file(name: str) -> Response:
    mimetype = MIME_TYPES.get(Path(name).suffix)
    return send_from_directory(STATIC_DIR, name, mimetype=mimetype)  # refuses '..' and absolute paths (404)


@page.after_request
def _page_headers(response: Response) -> Response:
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
