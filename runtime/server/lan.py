"""How the caregiver finds the server: its LAN addresses, a QR code of the URL, the start banner."""

from __future__ import annotations

import io
import socket
import sys
from pathlib import Path
from typing import List, Optional

from resonance import __version__
from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.models import ModelRegistry
from resonance.runtime.server.context import ServerSettings


def lan_addresses() -> List[str]:
    """This machine's LAN IPv4 address(es), best guess first; ['127.0.0.1'] when there is no network."""
    found: List[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            # connect() on UDP sends no packet: the kernel only picks the interface that would route there.
            probe.connect(("10.254.254.254", 1))
            found.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(str(info[4][0]))
    except OSError:
        pass
    unique = [ip for i, ip in enumerate(found) if ip not in found[:i] and not ip.startswith(("127.", "0."))]
    return unique or ["127.0.0.1"]


def urls_for(host: str, port: int) -> List[str]:
    """The /transcribe URLs a client can use for a server bound to ``host``, best first."""
    hosts = [*lan_addresses(), "127.0.0.1"] if host in ("0.0.0.0", "::", "") else [host]
    seen: List[str] = []
    for h in hosts:
        if h not in seen:
            seen.append(h)
    return [f"http://{h}:{port}/transcribe" for h in seen]


def qr_text(url: str) -> Optional[str]:
    """``url`` as a QR code drawn with block characters for a terminal; None without segno or a Unicode stdout.

    Two modules per character (half blocks) keep it small enough for an 80x24 terminal; the quiet zone
    (the white border scanners need) is part of the drawing.
    """
    try:
        import segno
    except ImportError:  # an optional nicety: the URL itself is printed anyway
        return None
    buf = io.StringIO()
    segno.make(url, error="m").terminal(out=buf, compact=True)
    text = buf.getvalue()
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):  # e.g. a Windows cp1252 console: no block characters
        return None
    return text


def banner(
    registry: ModelRegistry,
    device_config: DeviceConfig,
    settings: ServerSettings,
    port: int,
    models_dir: Path,
    token_note: str = "",
) -> str:
    """What `resonance serve` prints once it listens: the patients, the URL (and its QR code), the privacy."""
    lines = [f"Resonance {__version__} on '{device_config.name}' ({device_config.description})"]
    loaded = {bundle.patient: bundle for bundle in registry.bundles()}
    for entry in registry.entries():
        manifest = entry.manifest
        bundle = loaded.get(entry.patient)
        where = (
            "on " + ", ".join(getattr(bundle.transcriber, "providers", ()))
            if bundle is not None
            else "loads on first use"
        )
        lines.append(
            f"  patient {entry.patient}: {manifest.base_model}, {manifest.precision}, {manifest.language} {where}"
        )
    if len(loaded) < len(registry.patients):
        lines.append(
            f"  {len(loaded)} of {len(registry.patients)} models loaded: model_memory_mb "
            f"{registry.memory_budget_bytes // (1024 * 1024)} of the device config; the least recently used "
            "are unloaded to make room"
        )
    for name, why in registry.failed.items():
        lines.append(f"  SKIPPED {name}: {why}")
    urls = urls_for(device_config.host, port)
    lines.append("In the caregiver app, set the speech recognition (ASR) address to:")
    lines.extend(f"  {url}" for url in urls)
    qr = qr_text(urls[0])
    if qr:
        lines.append(f"or scan this QR code of {urls[0]} in the app's settings page:")
        lines.append(qr[:-1] if qr.endswith("\n") else qr)
    page = urls[0][: -len("/transcribe")] + "/"
    lines.append(f"Caregiver web page (record or upload a clip): {page}")
    if settings.auth_token:
        lines.append(f"Access token required ('Authorization: Bearer <token>'). {token_note}".rstrip())
    if settings.retain_dir:
        where = Path(settings.retain_dir).absolute()
        lines.append(f"Keeping every recording and its transcript under {where} (--retain).")
    else:
        lines.append("Recordings and transcripts are not saved to disk (turn on with --retain DIR).")
    if settings.collect_dir:
        where = Path(settings.collect_dir).absolute()
        lines.append(
            f"Keeping what the caregiver confirms or corrects on the page as training data under {where}"
            f"/<patient>/ (--collect, at most {settings.collect_quota_mb:g} MB)."
        )
    if settings.reload_interval_s > 0:
        lines.append(
            f"New or re-exported bundles in {models_dir} are picked up within {settings.reload_interval_s:g} s."
        )
    lines.append("Press Ctrl+C to stop.")
    return "\n".join(lines)
