"""Run the scoring app on uvicorn with a graceful drain on SIGTERM (and Ctrl-C).

On the signal the app is marked draining at once (``/readyz`` answers 503, new scoring
requests get 503 + ``Retry-After``), uvicorn stops accepting connections, the requests in
flight are answered, the batcher scores what is queued, and :func:`serve` returns — so the
process exits 0. A second Ctrl-C forces the exit.
"""

from __future__ import annotations

import signal

import uvicorn
from fastapi import FastAPI

__all__ = ["serve"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _DrainingServer(uvicorn.Server):
    """Marks the app draining the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig, frame) -> None:
        self.app.state.draining = True
        super().handle_exit(sig, frame)


def serve(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    drain_timeout: float | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Serve ``app`` until SIGTERM / SIGINT, then drain and return.

    Parameters
    ----------
    drain_timeout : float, optional
        Most seconds to wait for in-flight requests after the signal (None: until done).
    access_log : bool
        Log one line per request (method, path, status; never the body).
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=drain_timeout,
    )
    server = _DrainingServer(config, app)
    # uvicorn re-raises the signal that stopped it once it has drained; with a no-op handler
    # in place a graceful stop then ends normally instead of killing the process.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in _SIGNALS}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
