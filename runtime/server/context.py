"""What one server app shares with every request: its settings, patients, device limits and slots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from flask import current_app

from resonance.constants import COLLECT_QUOTA_MB, SAMPLE_RATE
from resonance.runtime.collect import Collector
from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.models import ModelRegistry
from resonance.runtime.retention import DEFAULT_MAX_MB, Retention
from resonance.runtime.server.slots import TranscriptionSlots
from resonance.runtime.server.tls import ServerCertificate

EXTENSION = "resonance"  # the key of the ServerContext in Flask's app.extensions


@dataclass(frozen=True)
class ServerSettings:
    """How the server behaves, apart from the model and its decoding (whisper.cpp's `server_params`)."""

    auth_token: Optional[str] = None  # bearer token clients must send; None = open (trusted home LAN)
    log_transcripts: bool = False  # log full transcripts; off: logs carry only their length (privacy)
    log_level: str = "INFO"  # level of the resonance loggers while serving
    reload_interval_s: float = 0.0  # re-scan the models folder this often for new/changed bundles; 0 = never
    retain_dir: Optional[Path] = (
        None  # keep each request's audio + result under DIR/<patient>/; None: nothing
    )
    # The most the retain folder may hold, in MB; past it new recordings are not kept (logged once).
    retain_max_mb: float = DEFAULT_MAX_MB
    # Host names (or addresses) the server answers to besides its own (hosts.HostPolicy): e.g. a name the
    # home router's DNS gives it. Requests naming any other host are refused (DNS rebinding).
    allowed_hosts: Tuple[str, ...] = ()
    # Keep what the caregiver confirms or corrects on the page as training data under DIR/<patient>/
    # (audio/ + labels.json, runtime/collect.py); None: POST /feedback is refused (403).
    collect_dir: Optional[Path] = None
    collect_quota_mb: float = COLLECT_QUOTA_MB  # the most the collect folder may hold
    # HTTPS: the certificate the listener serves (and /ca.crt offers); None = plain http (runtime/server/tls.py)
    tls: Optional[ServerCertificate] = None
    https_port: Optional[int] = None  # the HTTPS listener's port (None: no HTTPS), for the page's links


@dataclass(frozen=True)
class ServerContext:
    """Read-only for requests: nothing here changes per request (the registry swaps its own table)."""

    registry: ModelRegistry
    device_config: DeviceConfig
    settings: ServerSettings
    slots: TranscriptionSlots
    retention: Optional[Retention]
    collector: Optional[Collector]

    @classmethod
    def create(
        cls, registry: ModelRegistry, device_config: DeviceConfig, settings: ServerSettings
    ) -> ServerContext:
        slots = TranscriptionSlots(device_config.max_concurrent_requests, device_config.queue_timeout_s)
        retention = (
            Retention(settings.retain_dir, SAMPLE_RATE, settings.retain_max_mb)
            if settings.retain_dir
            else None
        )
        collector = (
            Collector(settings.collect_dir, settings.collect_quota_mb) if settings.collect_dir else None
        )
        return cls(registry, device_config, settings, slots, retention, collector)


def server_context() -> ServerContext:
    """The context of the app handling the current request."""
    return current_app.extensions[EXTENSION]
