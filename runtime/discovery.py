"""Finding the server on the home LAN without typing an IP address: mDNS / DNS-SD (python-zeroconf).

``resonance serve`` announces its page and API as ``_resonance._tcp`` (and the Wyoming port as
``_wyoming._tcp``, the type Home Assistant's Wyoming integration discovers, when Wyoming is open to the LAN);
``resonance discover`` browses for them. The announcement carries how to connect (scheme, port, whether a
token is needed, the certificate's fingerprint to check), never the patients' ids: anyone on the LAN hears it.

Announced on the interfaces the server listens on: every LAN interface for ``--host 0.0.0.0``, only that
address otherwise (on 127.0.0.1 the multicast stays on this machine, which is how the tests run it).
zeroconf is an optional dependency: a server without it says so in one line and serves anyway.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from resonance import __version__
from resonance.errors import ResonanceError

log = logging.getLogger(__name__)

SERVICE_TYPE = "_resonance._tcp.local."  # the page and the API (HTTP or HTTPS: the "scheme" property says)
WYOMING_SERVICE_TYPE = "_wyoming._tcp.local."  # Home Assistant's Wyoming integration browses for this
INSTALL_HINT = "pip install zeroconf (Python 3.8 on a Jetson: zeroconf==0.39.4), or serve without announcing"
BROWSE_SECONDS = 3.0  # mDNS answers come within a second on a LAN; a little more for a busy Wi-Fi


@dataclass(frozen=True)
class Service:
    """One announced service: a DNS-SD instance of ``kind`` at ``addresses:port`` with TXT ``properties``."""

    kind: str  # SERVICE_TYPE or WYOMING_SERVICE_TYPE
    instance: str  # the readable part of the name, e.g. "Resonance on care-pc"
    port: int
    addresses: Sequence[str]  # IPv4 addresses clients should use
    properties: Dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.instance}.{self.kind}"


def require_zeroconf() -> None:
    """A clear error, early, when zeroconf is not installed."""
    _zeroconf()


def _zeroconf() -> Any:
    try:
        import zeroconf
    except ImportError:
        raise ResonanceError("mDNS discovery needs the zeroconf package", INSTALL_HINT) from None
    return zeroconf


def interfaces_for(host: str) -> Optional[List[str]]:
    """The interfaces to announce on for a server bound to ``host``: None = every one (0.0.0.0), else that
    address alone (a server on 127.0.0.1 cannot be reached from elsewhere, so nothing leaves the machine)."""
    return None if host in ("0.0.0.0", "::", "") else [host]


def instance_name(label: str = "Resonance") -> str:
    """ "Resonance on <hostname>": what a discovery list shows (a second server's name gets a suffix)."""
    return f"{label} on {socket.gethostname().split('.')[0]}"[:63]  # a DNS label is at most 63 bytes


class Announcer:
    """Announces services by mDNS until ``close()`` (which sends the goodbye packets)."""

    def __init__(self, interfaces: Optional[Sequence[str]] = None) -> None:
        zeroconf = _zeroconf()
        choice = list(interfaces) if interfaces else zeroconf.InterfaceChoice.All
        self._zeroconf = zeroconf
        self.zc = zeroconf.Zeroconf(interfaces=choice, ip_version=zeroconf.IPVersion.V4Only)
        self._infos: List[Any] = []

    def announce(self, service: Service) -> str:
        """Register ``service``; returns the name it got (another server may hold the first choice)."""
        host = socket.gethostname().split(".")[0] or "resonance"
        info = self._zeroconf.ServiceInfo(
            service.kind,
            service.name,
            addresses=[socket.inet_aton(a) for a in service.addresses],
            port=service.port,
            properties=dict(service.properties),
            server=f"{host}.local.",
        )
        self.zc.register_service(info, allow_name_change=True)
        self._infos.append(info)
        return str(info.name)

    def close(self) -> None:
        for info in self._infos:
            try:
                self.zc.unregister_service(info)
            except Exception:  # a network gone away must not keep the server from stopping
                log.debug("mDNS goodbye for %s failed", info.name, exc_info=True)
        self.zc.close()


@dataclass(frozen=True)
class Found:
    """A server found on the LAN."""

    name: str
    addresses: List[str]
    port: int
    properties: Dict[str, str]

    @property
    def url(self) -> str:
        scheme = self.properties.get("scheme", "http")
        return f"{scheme}://{self.addresses[0] if self.addresses else '?'}:{self.port}/"

    def to_json(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "addresses": self.addresses,
            "port": self.port,
            "properties": self.properties,
        }


def discover(
    seconds: float = BROWSE_SECONDS, interfaces: Optional[Sequence[str]] = None, kind: str = SERVICE_TYPE
) -> List[Found]:
    """Browse the LAN for ``kind`` services for ``seconds``; each one found, resolved, in name order."""
    zeroconf = _zeroconf()
    choice = list(interfaces) if interfaces else zeroconf.InterfaceChoice.All
    zc = zeroconf.Zeroconf(interfaces=choice, ip_version=zeroconf.IPVersion.V4Only)
    names: List[str] = []

    class Listener:
        def add_service(self, _zc: Any, _kind: str, name: str) -> None:
            if name not in names:
                names.append(name)

        def update_service(self, *_: Any) -> None:
            pass

        def remove_service(self, *_: Any) -> None:
            pass

    try:
        zeroconf.ServiceBrowser(zc, kind, Listener())
        time.sleep(seconds)
        found = []
        for name in sorted(names):
            info = zc.get_service_info(kind, name, timeout=1500)
            if info is None or info.port is None:
                continue
            properties = {
                _text(k): _text(v)
                for k, v in (info.properties or {}).items()
                if k is not None and v is not None
            }
            addresses = [socket.inet_ntoa(a) for a in info.addresses if len(a) == 4]
            found.append(Found(name[: -len(kind) - 1], addresses, int(info.port), properties))
        return found
    finally:
        zc.close()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def http_service(
    addresses: Sequence[str],
    port: int,
    scheme: str,
    auth: bool,
    fingerprint: Optional[str] = None,
    http_port: Optional[int] = None,
) -> Service:
    """The page and the API, as `resonance discover` and apps read them (TXT keys are the contract)."""
    properties = {
        "version": __version__,
        "scheme": scheme,
        "path": "/",  # the caregiver's page
        "api": "/transcribe",
        "openai": "/v1",
        "auth": "token" if auth else "none",
    }
    if fingerprint:
        properties["cert_sha256"] = fingerprint  # check it before trusting the local CA
    if http_port:
        properties["http_port"] = str(http_port)
    return Service(SERVICE_TYPE, instance_name(), port, list(addresses), properties)


def wyoming_service(addresses: Sequence[str], port: int) -> Service:
    """The Wyoming port, as Home Assistant discovers speech-to-text servers."""
    return Service(WYOMING_SERVICE_TYPE, instance_name("Resonance STT"), port, list(addresses))
