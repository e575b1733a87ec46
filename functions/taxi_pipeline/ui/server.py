"""Serve the UI with uvicorn: ``taxi-pipeline ui``, or ``python -m taxi_pipeline.ui``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import uvicorn

from taxi_pipeline.settings import Settings
from taxi_pipeline.ui.app import create_app
from taxi_pipeline.ui.backend import open_backend
from taxi_pipeline.ui.security import Access

log = logging.getLogger(__name__)


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Check the access rules, open the backend, serve until interrupted, then close it.

    Raises ``ConfigurationError`` (nothing opened) for a non-loopback ``host`` without a token.
    """
    token = settings.ui_token.get_secret_value() if settings.ui_token else None
    access = Access.for_bind(host, token)
    backend = open_backend(settings)
    config = uvicorn.Config(
        create_app(backend, access),
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        server_header=False,
        # The page refreshes poll; a slow client must not hold a worker thread for long.
        timeout_keep_alive=5,
    )
    server = _Server(config, on_ready)
    server.run()


class _Server(uvicorn.Server):
    """Says where it listens once the socket is bound (port 0 gets a free port)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[str], None] | None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets)  # type: ignore[arg-type]
        if self._on_ready is None or not self.servers:
            return
        address = self.servers[0].sockets[0].getsockname()
        host = address[0]
        shown = f"[{host}]" if ":" in host else host
        self._on_ready(f"http://{shown}:{address[1]}/")
