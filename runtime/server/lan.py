"""How the caregiver finds the server: its LAN addresses, a QR code of the URL, the start banner."""

from __future__ import annotations

import io
import socket
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from resonance import __version__
from resonance.runtime.bundle import describe_model
from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.models import ModelRegistry
from resonance.runtime.server.context import ServerSettings
from resonance.runtime.server.tls import ServerCertificate


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


def urls_for(host: str, port: int, scheme: str = "http") -> List[str]:
    """The /transcribe URLs a client can use for a server bound to ``host``, best first."""
    return [f"{base}/transcribe" for base in base_urls(host, port, scheme)]


def base_urls(host: str, port: int, scheme: str = "http") -> List[str]:
    """``scheme://address:port`` for each address a client can use for a server bound to ``host``, best
    first: the LAN address(es), then loopback (when bound to every interface), else ``host`` itself."""
    hosts = [*lan_addresses(), "127.0.0.1"] if host in ("0.0.0.0", "::", "") else [host]
    seen: List[str] = []
    for h in hosts:
        if h not in seen:
            seen.append(h)
    return [f"{scheme}://{'[' + h + ']' if ':' in h else h}:{port}" for h in seen]


def page_url(base: str, token: Optional[str] = None) -> str:
    """The caregiver page's URL; with ``token``, signed in: the token goes in the fragment (after '#'),
    which browsers never send to the server, so it stays out of requests and logs; the page stores it."""
    return f"{base}/#token={token}" if token else f"{base}/"


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


# How a phone trusts the local CA once (README's "Trust the server on a phone" has the same steps). Menu names
# differ a little between Android makers; Settings' search finds them.
TRUST_STEPS = (
    "Android: open the link in Chrome, then Settings > Security (and privacy) > More security settings > "
    "Encryption & credentials > Install a certificate > CA certificate > Install anyway > pick resonance-ca.crt",
    "iPhone/iPad: open the link in Safari > Allow; Settings > Profile Downloaded > Install; then Settings > "
    "General > About > Certificate Trust Settings > turn on the Resonance local CA",
)


def banner(
    registry: ModelRegistry,
    device_config: DeviceConfig,
    settings: ServerSettings,
    port: int,
    models_dir: Path,
    token_note: str = "",
    http_port: Optional[int] = None,
    qr_token: bool = False,
    extra: Sequence[str] = (),
) -> str:
    """What `resonance serve` prints once it listens: the patients, the caregiver page's URL and its QR code,
    the API's address for apps, how a phone trusts the HTTPS certificate, and what is kept on disk.

    ``http_port``: the plain-HTTP listener beside HTTPS, if any. ``qr_token``: put the access token in the QR
    code (signed in at the first scan); only for a terminal, never for a log such as the journal. ``extra``:
    lines of the other services (Wyoming, the mDNS announcement), before the last line.
    """
    described = f" ({device_config.description})" if device_config.description else ""  # optional in a config
    lines = [f"Resonance {__version__} on '{device_config.name}'{described}"]
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
            f"  patient {entry.patient}: {describe_model(manifest)}, {manifest.precision}, {manifest.language} "
            f"{where}"
        )
    if len(loaded) < len(registry.patients):
        lines.append(
            f"  {len(loaded)} of {len(registry.patients)} models loaded: model_memory_mb "
            f"{registry.memory_budget_bytes // (1024 * 1024)} of the device config; the least recently used "
            "are unloaded to make room"
        )
    for name, why in registry.failed.items():
        lines.append(f"  SKIPPED {name}: {why}")
    scheme = "https" if settings.tls else "http"
    bases = base_urls(device_config.host, port, scheme)
    page = page_url(bases[0])
    lines.append(f"Caregiver's page (open it on the phone, or scan the QR code with its camera): {page}")
    if device_config.host in ("0.0.0.0", "::", ""):  # by name too, where the phone resolves mDNS names
        mdns = socket.gethostname().split(".")[0].lower() + ".local"
        lines.append(f"  or by name: {page_url(f'{scheme}://{mdns}:{port}')}")
    signed_in = settings.auth_token if qr_token else None
    qr = qr_text(page_url(bases[0], signed_in))
    if qr:
        lines.append(qr[:-1] if qr.endswith("\n") else qr)
        if settings.auth_token:
            lines.append(
                "  (the QR code signs the phone in: it carries the access token)"
                if signed_in
                else "  (the page asks for the access token once; started in a terminal, the QR code carries it)"
            )
    lines.append(
        f"API base URL for apps: {bases[0]}  (POST /transcribe, /v1/audio/transcriptions, /feedback)"
    )
    lines.append("In the caregiver app, set the speech recognition (ASR) address to:")
    lines.extend(f"  {url}" for url in urls_for(device_config.host, port, scheme))
    if http_port:
        plain = base_urls(device_config.host, http_port, "http")[0]
        lines.append(f"  {plain}/transcribe   (plain http: for apps that cannot trust the certificate)")
    if settings.tls:
        lines.extend(_certificate_lines(settings.tls, bases[0], http_port))
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
    lines.extend(extra)
    lines.append("Press Ctrl+C to stop.")
    return "\n".join(lines)


def _certificate_lines(cert: ServerCertificate, base: str, http_port: Optional[int]) -> List[str]:
    until = f"valid until {cert.not_after:%Y-%m-%d}"
    if cert.ca_file is None:  # --cert/--key: the user's own certificate, trusted however they set it up
        return [f"HTTPS: your certificate {cert.cert_file} ({until}; SHA-256 {cert.fingerprint})"]
    host = base.split("://", 1)[1].rsplit(":", 1)[0]
    download = f"http://{host}:{http_port}/ca.crt" if http_port else f"{base}/ca.crt"
    return [
        f"HTTPS: certificate authority of this server: {cert.ca_file} (server certificate {cert.status}; {until})",
        "Trust it once on each phone (else the phone warns, and the page cannot install or use the microphone):",
        f"  open {download} on the phone; the certificate's SHA-256 fingerprint (in its details) must be",
        f"  {cert.fingerprint}",
        *(f"  {step}" for step in TRUST_STEPS),
    ]
