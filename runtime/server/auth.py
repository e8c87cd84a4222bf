"""The server's bearer token: where it is kept, and whether a request carries it (no HTTP framework here, so
any front end, e.g. an ASGI gate that refuses before reading a body, can call the same check)."""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Optional, Tuple

from resonance.errors import ResonanceError

# Open without a token: liveness, the page itself (it holds no patient data and must load to ask for it), its
# service worker, and the local CA's certificate (public; a phone needs it before it can trust the server).
OPEN_PATHS = ("/", "/health", "/sw.js", "/ca.crt")
OPEN_PREFIXES = ("/static/",)


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def authorized(authorization_header: str, token: Optional[str]) -> bool:
    """An open server (no token), or an ``Authorization: Bearer <token>`` header with the right token."""
    if not token:
        return True
    scheme, _, given = authorization_header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def default_token_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "resonance" / "token"


def load_or_create_token(path: Path) -> Tuple[str, bool]:
    """The server's bearer token from ``path`` (created, mode 0600, on first use). Returns (token, created)."""
    path = Path(path)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if os.name == "posix" and mode & 0o077:
            raise ResonanceError(
                f"the token file {path} can be read by other users (mode {mode:o})", f"chmod 600 {path}"
            )
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise ResonanceError(
                f"the token file {path} holds no usable token", f"delete {path} to make a new one"
            )
        return token, False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Created 0600 by open() itself: the token is never world-readable, not even briefly.
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # Python >= 3.8
        raise
    return token, True


def token_note(path: Path, token: str, created: bool, interactive: bool) -> str:
    """What `resonance serve --auth` prints about its token. The token itself only on a terminal a person
    watches, once: under systemd the output goes to the journal, which other admins and log shippers read."""
    if not created:
        return f"Token in {path} (read it with: cat {path})."
    if interactive:
        return f"New token (shown once; kept in {path}):\n  {token}"
    return f"A new token was made and kept in {path}; it is not printed into logs. Read it with: cat {path}"
