"""Which names the server answers to (the Host header) and which pages may use it (the Origin header).

Both defend against a web page the caregiver happens to open, not against the LAN itself (SECURITY.md):

* **DNS rebinding**: a page on ``evil.example`` re-points its own name at the server's LAN address; the
  browser then treats the server as ``evil.example`` and lets the page read its answers. Such requests carry
  ``Host: evil.example``, so only this machine's names and addresses are served.
* **Cross-site requests (CSRF)**: any page may make the browser POST to ``http://192.168.1.20:8000``; the
  browser marks it with the page's ``Origin``. Only requests without an Origin (apps, curl) or from the
  server's own page are served.

Framework-free (the ASGI gate checks these before anything reads a body).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import FrozenSet, Iterable, Optional, Tuple
from urllib.parse import urlsplit

from resonance.runtime.server.lan import lan_addresses

DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(host_header: str) -> Tuple[str, Optional[int]]:
    """``Host`` header -> (lower-case name or address without brackets, port or None). ValueError if malformed."""
    value = host_header.strip().lower()
    if value.startswith("["):  # [v6]:port
        address, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(host_header)
        port_text = rest[1:]
    elif value.count(":") == 1:
        address, _, port_text = value.partition(":")
    elif ":" not in value or _address(value):  # a bare name, or a bare IPv6 address (unambiguous)
        address, port_text = value, ""
    else:
        raise ValueError(host_header)
    if not address or (port_text and not port_text.isdigit()):
        raise ValueError(host_header)
    return address.rstrip("."), int(port_text) if port_text else None


def _address(text: str) -> Optional[str]:
    """The canonical form of an IP address, or None for a name."""
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))  # fe80::1%eth0 -> fe80::1
    except ValueError:
        return None


def this_machines_names() -> FrozenSet[str]:
    """localhost, the host name, <hostname>.local (mDNS, what phones resolve on a home LAN) and the FQDN."""
    names = {"localhost"}
    for name in (socket.gethostname(), socket.getfqdn()):
        name = name.lower().rstrip(".")
        if name:
            names.add(name)
            names.add(name.split(".", 1)[0] + ".local")
    return frozenset(names)


@dataclass(frozen=True)
class HostPolicy:
    """The names and addresses the server answers to.

    An IP address is allowed when it is loopback, one of this machine's LAN addresses, one the user named,
    or the very address the connection arrived on (a rebinding page cannot make the browser send an IP
    literal as Host: the Host is always the page's own name).
    """

    names: FrozenSet[str]
    addresses: FrozenSet[str]

    @classmethod
    def for_server(cls, extra: Iterable[str] = (), bind_host: str = "") -> HostPolicy:
        """This machine's names and LAN addresses, the address it is bound to, and the user's ``extra``."""
        names = set(this_machines_names())
        addresses = {a for a in (_address(ip) for ip in lan_addresses()) if a}
        for entry in (*extra, bind_host):
            name = entry.strip().lower().rstrip(".")
            if not name or name in ("0.0.0.0", "::"):
                continue
            address = _address(name.strip("[]"))
            (addresses if address else names).add(address or name)
        return cls(frozenset(names), frozenset(addresses))

    def allows(self, host_header: Optional[str], local_address: Optional[str] = None) -> bool:
        """Whether a request with this ``Host`` header, arriving on ``local_address``, is for this server.

        No Host header at all (HTTP/1.0 clients) is allowed: browsers always send one.
        """
        if host_header is None:
            return True
        try:
            host, _ = split_host(host_header)
        except ValueError:
            return False
        address = _address(host)
        if address is None:
            return host in self.names
        if ipaddress.ip_address(address).is_loopback or address in self.addresses:
            return True
        return local_address is not None and address == _address(local_address)


def same_origin(origin: str, scheme: str, host_header: Optional[str]) -> bool:
    """Whether a browser's ``Origin`` names the origin the request was sent to (``scheme://Host``)."""
    if host_header is None:
        return False
    try:
        parts = urlsplit(origin.strip())
        origin_host, origin_port = parts.hostname, parts.port  # .port raises ValueError when malformed
        host, port = split_host(host_header)
    except ValueError:
        return False
    if parts.scheme != scheme or origin_host is None or parts.path not in ("", "/"):
        return False
    default = DEFAULT_PORTS.get(scheme)
    return origin_host.rstrip(".") == host and (origin_port or default) == (port or default)
