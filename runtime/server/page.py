"""The caregiver's web page (runtime/static): record or upload a clip, read the text."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"  # package data of resonance.runtime
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


@page.get("/static/<path:name>")
def static_file(name: str) -> Response:
    return send_from_directory(STATIC_DIR, name)  # refuses '..' and absolute paths (404)


@page.after_request
def _page_headers(response: Response) -> Response:
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
