"""The HTTP listener: waitress serving the WSGI app (the only module that knows waitress).

waitress has no TLS and buffers a whole body before the app can refuse it; issue #12 replaces it with an
asyncio front. Whatever replaces it offers the same three things: ``port``, ``run()``, ``close()``.
"""

from __future__ import annotations

from typing import Any, Optional

from resonance.runtime.device_config import DeviceConfig

EXTRA_THREADS = 4  # waitress threads beyond the transcription slots: /health etc. stay responsive when busy


class WaitressListener:
    """Binds at construction (so ``port`` is known before the banner), serves in ``run()`` until interrupted."""

    def __init__(self, app: Any, device_config: DeviceConfig, port: Optional[int] = None) -> None:
        from waitress import create_server

        body_cap = device_config.max_upload_bytes * 2 + (
            1 << 20
        )  # beyond Flask's JSON 413: waitress's own 413
        threads = device_config.max_concurrent_requests + EXTRA_THREADS
        self._server = create_server(
            app,
            host=device_config.host,
            port=device_config.port if port is None else port,
            threads=threads,
            max_request_body_size=body_cap,
            inbuf_overflow=body_cap,  # keep request bodies (audio) in RAM: waitress spills bigger ones to disk
            connection_limit=max(32, threads * 4),
            ident="resonance",
        )

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def run(self) -> None:
        self._server.run()

    def close(self) -> None:
        self._server.close()
