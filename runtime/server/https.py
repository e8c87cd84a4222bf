"""Which of HTTPS and plain http a start serves, and with which certificate (the decision; tls.py makes them).

* Serving the LAN (any --host but loopback): HTTPS on ``port`` (a phone's browser gives the page the
  microphone only in a secure context), plus plain http on ``http_port`` (8080) for apps that cannot trust
  the local CA and for a phone's first visit, to download that CA.
* On loopback: plain http, as a browser on the server itself is a secure context anyway.
* ``--https`` turns HTTPS on for any host (loopback too: tests, or a reverse proxy in front); ``--http``
  turns it off everywhere; ``--cert/--key`` serve the user's own certificate instead of the local CA's.
"""

from __future__ import annotations

import ipaddress
from typing import Optional, Sequence

from resonance.errors import ResonanceError
from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.server.lan import lan_addresses
from resonance.runtime.server.tls import (
    ServerCertificate,
    default_tls_dir,
    local_certificate,
    server_names,
    user_certificate,
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def wants_tls(host: str, https: bool = False, http: bool = False, own_certificate: bool = False) -> bool:
    """HTTPS unless ``--http``; on loopback only when asked (``--https``, or a certificate of one's own)."""
    if http:
        return False
    return https or own_certificate or not is_loopback(host)


def choose_certificate(
    host: str,
    https: bool = False,
    http: bool = False,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    extra_names: Sequence[str] = (),
) -> Optional[ServerCertificate]:
    """The certificate this start serves, or None for plain http. The local CA's server certificate covers
    this machine's names and LAN addresses, ``host`` when it is a specific address, and ``extra_names``
    (the names --allow-host lets in, e.g. what the home router's DNS calls the server)."""
    if bool(cert) != bool(key):
        raise ResonanceError("--cert and --key go together", "pass both: the certificate and its private key")
    if not wants_tls(host, https, http, own_certificate=bool(cert)):
        return None
    if cert and key:
        return user_certificate(cert, key)
    addresses = lan_addresses()
    if not is_loopback(host) and host not in ("0.0.0.0", "::", ""):
        addresses.insert(0, host)
    dns_names, ips = server_names(addresses)
    for name in extra_names:
        name = name.strip().strip("[]").lower().rstrip(".")
        try:
            address = str(ipaddress.ip_address(name))
        except ValueError:
            if name and name not in dns_names:
                dns_names.append(name)
            continue
        if address not in ips:
            ips.append(address)
    return local_certificate(default_tls_dir(), dns_names, ips)


def plain_http_port(
    config: DeviceConfig, tls: Optional[ServerCertificate], override: Optional[int] = None
) -> Optional[int]:
    """The plain-http port beside HTTPS, or None. By default only when serving the LAN (``http_port`` of the
    device config); ``--http-port`` asks for one on loopback too (0 = none)."""
    if tls is None:
        return None  # the one listener is plain http already
    port = override if override is not None else (None if is_loopback(config.host) else config.http_port)
    return port or None
