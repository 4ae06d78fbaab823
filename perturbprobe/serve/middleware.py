"""ASGI middleware of the scoring service: a request-body size limit and per-request metrics.

Both are plain ASGI wrappers (no buffering of responses), so they cost next to nothing.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.exceptions import HTTPException

from .metrics import ServiceMetrics

__all__ = ["BodySizeLimit", "RequestMetrics", "error_body"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(kind: str, message: str) -> dict[str, Any]:
    """The JSON body of every error answer: ``{"error": {"type": kind, "message": ...}}``."""
    return {"error": {"type": kind, "message": message}}


class BodySizeLimit:
    """Answers 413 to a request whose body is longer than ``max_bytes``: at once when its
    ``Content-Length`` says so, else as soon as the streamed body passes the limit (so a client
    cannot make the server hold an unbounded body)."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            self.metrics.errors.labels(kind="too_large").inc()
            await _send_json(send, 413, error_body("too_large", self._message()))
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # HTTPException passes through FastAPI's body parsing to the app's handler
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)


class RequestMetrics:
    """Counts every HTTP request by endpoint and status code. Paths outside ``endpoints`` are
    counted as ``other`` (so random 404 paths cannot blow up the label set)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, endpoints: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def recording_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
