"""`resonance serve`: bind the port, load every patient's bundle, print where to find it, serve until Ctrl+C."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, List, Optional, Tuple

from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.models import ModelRegistry
from resonance.runtime.server.app import create_app
from resonance.runtime.server.context import EXTENSION, ServerSettings
from resonance.runtime.server.gate import Gate
from resonance.runtime.server.hosts import HostPolicy
from resonance.runtime.server.lan import banner
from resonance.runtime.server.listener import Endpoint, Front, bind
from resonance.runtime.server.tls import ServerCertificate, ssl_context

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the wyoming library is imported only when Wyoming is served
    from resonance.runtime.server.wyoming import WyomingSettings


def endpoints_for(
    device_config: DeviceConfig,
    port: Optional[int] = None,
    tls: Optional[ServerCertificate] = None,
    http_port: Optional[int] = None,
) -> List[Endpoint]:
    """Where the server listens: the device config's host and port (``port`` overrides; 0 = any free), over
    HTTPS with ``tls``, and then plain http on ``http_port`` beside it (runtime/server/https.py decides)."""
    main = Endpoint(
        device_config.host, device_config.port if port is None else port, ssl_context(tls) if tls else None
    )
    plain = [Endpoint(device_config.host, http_port)] if tls is not None and http_port is not None else []
    return [main, *plain]


def serve(
    models_dir: Path,
    device_config: DeviceConfig,
    settings: Optional[ServerSettings] = None,
    port: Optional[int] = None,
    token_note: str = "",
    http_port: Optional[int] = None,
    qr_token: bool = False,
    wyoming: Optional[WyomingSettings] = None,
    announce: bool = False,
) -> None:
    """Load every bundle under ``models_dir`` and serve the API until interrupted.

    The ports are bound first: a port in use is one error line before any model is loaded.
    ``port`` overrides the device config's (0 = any free port; the URL printed says which); with
    ``settings.tls`` it serves HTTPS, and plain http on ``http_port`` beside it (0 = any free port).
    ``qr_token``: the QR code printed signs the phone in (for a terminal, never for a log).
    ``wyoming``: also serve the Wyoming protocol (Home Assistant) in the same event loop. ``announce``: make
    the server findable by mDNS (runtime/discovery.py) on the interfaces it listens on.
    """
    settings = settings or ServerSettings()
    logging.getLogger("resonance").setLevel(settings.log_level.upper())
    logging.getLogger("uvicorn").setLevel(logging.WARNING)  # its start/stop chatter; warnings still show
    front = Front(endpoints_for(device_config, port, settings.tls, http_port))
    if settings.tls is not None:
        settings = dataclasses.replace(settings, https_port=front.ports[0])  # the page links to it
    plain_port = front.ports[1] if len(front.ports) > 1 else None
    registry: Optional[ModelRegistry] = None
    wyoming_socket = None
    announcer = None
    try:
        if announce:
            from resonance.runtime.discovery import require_zeroconf

            require_zeroconf()  # without it, one error line before the models load
        if wyoming is not None:
            wyoming_socket = bind(wyoming.host, wyoming.port, "--wyoming-port")
        # onnxruntime >= 1.2x keeps usage telemetry (a device id, the OS, paths) in ~/.cache/Microsoft/...
        # and a session file in $TMPDIR, to upload when online. A patient's offline device writes nothing it
        # was not asked to: off unless the operator set the variable. onnxruntime reads it at import, below.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        registry = ModelRegistry(models_dir, device_config, poll_interval_s=settings.reload_interval_s)
        if not registry.patients:
            raise registry.no_patient_error()
        app = create_app(registry, device_config, settings)
        context = app.extensions[EXTENSION]
        hosts = HostPolicy.for_server(settings.allowed_hosts, device_config.host)
        others: List[Callable[[], Awaitable[None]]] = []
        extra: List[str] = []
        if registry.single_bundle:
            extra.append(
                f"{models_dir} is one patient's bundle: serving it alone (to serve several patients, pass the "
                f"folder that holds their bundles, e.g. --models {models_dir.parent})"
            )
        if wyoming is not None and wyoming_socket is not None:
            from resonance.runtime.server.wyoming import WyomingServer

            wyoming_server = WyomingServer(wyoming_socket, context, wyoming)
            others.append(wyoming_server.serve)
            extra.extend(wyoming_server.banner_lines(settings.auth_token is not None))
        if announce:  # once everything else has started
            announcer, lines = start_announcing(
                device_config.host, front.ports[0], settings, plain_port, wyoming, wyoming_socket
            )
            extra.extend(lines)
        text = banner(
            registry,
            device_config,
            settings,
            front.ports[0],
            models_dir,
            token_note,
            plain_port,
            qr_token,
            extra,
        )
        print(text, flush=True)
        try:
            front.run(Gate(app, context, hosts), *others)
        finally:
            context.slots.close()
    finally:
        if registry is not None:
            registry.stop_polling()
        if announcer is not None:
            announcer.close()  # the goodbye packets: clients forget the server at once
        if wyoming_socket is not None:
            wyoming_socket.close()
        front.close()


def start_announcing(
    host: str,
    port: int,
    settings: ServerSettings,
    plain_port: Optional[int],
    wyoming: Optional[WyomingSettings],
    wyoming_socket: Any,
) -> Tuple[Any, List[str]]:
    """(the Announcer or None, the banner's lines). mDNS is a convenience: a network that refuses multicast
    (a container, no interface up) is one line in the banner, and the server serves anyway."""
    from resonance.runtime.discovery import Announcer, interfaces_for

    announcer = None
    try:
        announcer = Announcer(interfaces_for(host))
        return announcer, announce_services(
            announcer, host, port, settings, plain_port, wyoming, wyoming_socket
        )
    except Exception as exc:  # zeroconf raises OSError and its own errors; none of them may stop the server
        log.warning("mDNS announcement failed: %s: %s", type(exc).__name__, exc)
        if announcer is not None:
            announcer.close()
        why = f"{type(exc).__name__}: {exc}"[:120]
        return None, [f"Not announced by mDNS ({why}): apps need the address above"]


def announce_services(
    announcer: Any,
    host: str,
    port: int,
    settings: ServerSettings,
    plain_port: Optional[int],
    wyoming: Optional[WyomingSettings],
    wyoming_socket: Any,
) -> List[str]:
    """Announce the page/API (and Wyoming, where it listens on the announced interfaces); the banner's lines."""
    from resonance.runtime.discovery import http_service, wyoming_service
    from resonance.runtime.server.lan import lan_addresses

    addresses = lan_addresses() if host in ("0.0.0.0", "::", "") else [host]
    tls = settings.tls
    service = http_service(
        addresses,
        port,
        "https" if tls else "http",
        settings.auth_token is not None,
        tls.fingerprint if tls else None,
        plain_port,
    )
    name = announcer.announce(service)
    where = "on every network interface" if host in ("0.0.0.0", "::", "") else f"on {host} only"
    lines = [
        f"Announced by mDNS {where} as '{name.split('._', 1)[0]}' (_resonance._tcp): apps and "
        "`resonance discover` find it without its address (--no-announce turns it off)"
    ]
    if wyoming is not None and wyoming_socket is not None and wyoming.host in (host, "0.0.0.0", "::"):
        wyoming_port = int(wyoming_socket.getsockname()[1])
        announcer.announce(wyoming_service(addresses, wyoming_port))
        lines.append(
            "  and the Wyoming port (_wyoming._tcp): Home Assistant offers it under Devices & services"
        )
    return lines
