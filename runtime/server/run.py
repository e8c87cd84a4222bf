"""`resonance serve`: load every patient's bundle, build the app, print where to find it, serve until Ctrl+C."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from resonance.errors import ResonanceError
from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.models import ModelRegistry
from resonance.runtime.server.app import create_app
from resonance.runtime.server.context import ServerSettings
from resonance.runtime.server.lan import banner
from resonance.runtime.server.waitress_listener import WaitressListener


def serve(
    models_dir: Path,
    device_config: DeviceConfig,
    settings: Optional[ServerSettings] = None,
    port: Optional[int] = None,
    token_note: str = "",
) -> None:
    """Load every bundle under ``models_dir`` and serve the API until interrupted.

    ``port`` overrides the device config's (0 = any free port; the URL printed says which).
    """
    settings = settings or ServerSettings()
    logging.getLogger("resonance").setLevel(settings.log_level.upper())
    # onnxruntime >= 1.2x keeps usage telemetry (a device id, the OS, paths) in ~/.cache/Microsoft/... and
    # a session file in $TMPDIR, to upload when online. A patient's offline device writes nothing it was not
    # asked to: off unless the operator set the variable. onnxruntime reads it at import, i.e. just below.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    registry = ModelRegistry(models_dir, device_config, poll_interval_s=settings.reload_interval_s)
    if not registry.patients:
        problems = "; ".join(f"{k}: {v}" for k, v in registry.failed.items()) or "it has no bundle folders"
        raise ResonanceError(
            f"no usable bundle in {models_dir} ({problems})",
            "export one with `resonance export --out <models>/<patient>` and copy the whole folder here",
        )
    listener = WaitressListener(create_app(registry, device_config, settings), device_config, port)
    print(banner(registry, device_config, settings, listener.port, models_dir, token_note), flush=True)
    try:
        listener.run()
    finally:
        registry.stop_polling()
        listener.close()
