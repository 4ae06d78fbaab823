"""The scoring service as an ASGI app (FastAPI): ``create_app(scorer, settings)``.

Endpoints: ``POST /v1/score``, ``GET /v1/bundle``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics`` (Prometheus text) and the generated OpenAPI schema (``/openapi.json``,
``/docs``). With an API key, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <key>``;
the health checks and the schema stay open. Every error answer is
``{"error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from .._version import __version__
from ..bundles import Scorer
from .batcher import MicroBatcher, QueueFull, ShuttingDown
from .metrics import ServiceMetrics
from .middleware import BodySizeLimit, RequestMetrics, error_body
from .schema import ScoreRequest, ScoreResponse

__all__ = ["ServeSettings", "create_app"]

logger = logging.getLogger(__name__)

_ENDPOINTS = (
    "/v1/score",
    "/v1/bundle",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/openapi.json",
)
_INTERNAL = "internal error while scoring; see the server log"
_STATUS_KINDS = {
    400: "invalid_json",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    422: "invalid_request",
    503: "unavailable",
    504: "timeout",
}


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of the service (the ``perturbprobe serve`` options).

    Attributes
    ----------
    max_batch : int
        Most pairs per extraction batch.
    max_wait_ms : float
        How long a batch waits for more pairs after its oldest one arrived.
    max_queue : int
        Most pairs waiting; a request that would exceed it gets 503 + ``Retry-After``.
    max_pairs : int
        Most pairs per request (422 beyond).
    max_response_chars : int
        Longest ``response`` accepted, in characters (422 beyond); responses longer than the
        model's context in tokens are reported per pair.
    max_body_bytes : int
        Largest request body (413 beyond).
    request_timeout : float
        Seconds a request may wait for its results (504 beyond).
    api_key : str or None
        When set, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <api_key>``.
    """

    max_batch: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_pairs: int = 64
    max_response_chars: int = 16_000
    max_body_bytes: int = 2_000_000
    request_timeout: float = 60.0
    api_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_pairs", "max_response_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or not self.request_timeout > 0:
            raise ValueError("max_wait_ms must be >= 0 and request_timeout > 0")
        if self.max_pairs > self.max_queue:
            raise ValueError(
                f"max_pairs ({self.max_pairs}) must not exceed max_queue ({self.max_queue}): "
                "such a request could never be queued"
            )
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty")


class ServiceError(HTTPException):
    """An error answer of a given ``kind`` (the ``error.type`` of the body)."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(status, message, headers=headers)
        self.kind = kind


def create_app(scorer: Scorer, settings: ServeSettings | None = None) -> FastAPI:
    """The scoring service for ``scorer`` (its bundle and LLM are already loaded and verified).

    ``app.state`` holds ``scorer``, ``settings``, ``metrics``, ``batcher`` and ``draining``
    (set it to refuse new work while in-flight requests finish; ``perturbprobe serve`` does on
    SIGTERM).
    """
    settings = settings or ServeSettings()
    metrics = ServiceMetrics()
    bundle = scorer.bundle
    bundle_id = str(bundle.manifest.get("manifest_sha256", ""))
    batcher = MicroBatcher(
        lambda pairs: _score_batch(scorer, pairs),
        max_batch=settings.max_batch,
        max_wait=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        metrics=metrics,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.draining = False
        await batcher.start()
        yield
        app.state.draining = True
        await batcher.stop()

    app = FastAPI(
        title="perturbprobe",
        version=__version__,
        summary="Calibrated confidence that an LLM's answer is right.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.scorer = scorer
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.state.draining = False
    _add_error_handlers(app, metrics)
    authorized = Depends(_authorization(settings.api_key))

    @app.get("/healthz", summary="The process is up.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Model and bundle loaded and verified, taking requests.")
    async def readyz() -> JSONResponse:
        if app.state.draining or not batcher.running:
            return JSONResponse(error_body("unavailable", "shutting down"), status_code=503)
        return JSONResponse({"status": "ready", "bundle": bundle_id})

    @app.get("/metrics", summary="Prometheus metrics.", dependencies=[authorized])
    async def prometheus_metrics() -> Response:
        metrics.queue_depth.set(batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/bundle", summary="The bundle's identity.", dependencies=[authorized])
    async def bundle_identity() -> dict[str, Any]:
        return _bundle_identity(bundle.manifest, bundle_id)

    @app.post(
        "/v1/score",
        summary="Score (prompt, response) pairs.",
        dependencies=[authorized],
        responses={200: {"model": ScoreResponse}},
    )
    async def score(request: ScoreRequest) -> JSONResponse:
        started = time.perf_counter()
        metrics.in_flight.inc()
        try:
            _check_limits(request, settings)
            if app.state.draining:
                raise ServiceError(
                    503,
                    "shutting_down",
                    "the service is shutting down",
                    headers={"Retry-After": "1"},
                )
            try:
                results = await batcher.score(
                    [pair.scorer_input() for pair in request.pairs],
                    timeout=settings.request_timeout,
                )
            except QueueFull as exc:
                retry = _retry_after(batcher, settings)
                raise ServiceError(
                    503,
                    "queue_full",
                    f"server busy: {exc}; retry later",
                    headers={"Retry-After": str(retry)},
                ) from None
            except ShuttingDown as exc:
                raise ServiceError(
                    503, "shutting_down", str(exc), headers={"Retry-After": "1"}
                ) from None
            except TimeoutError:
                raise ServiceError(
                    504,
                    "timeout",
                    f"no result within the request timeout of {settings.request_timeout:g} s",
                ) from None
            except Exception as exc:  # the batcher logged it with its traceback
                raise ServiceError(500, "internal", _INTERNAL) from exc
            body = _response_body(request, results, bundle, bundle_id, metrics)
            metrics.latency.observe(time.perf_counter() - started)
            return JSONResponse(body)
        finally:
            metrics.in_flight.dec()

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestMetrics, metrics=metrics, endpoints=_ENDPOINTS)  # outermost
    return app


# ---- scoring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PairResult:
    confidence: float | None
    abstain: bool | None
    error: str | None
    shift_values: dict[str, float] | None


def _score_batch(scorer: Scorer, pairs: list[dict[str, Any]]) -> list[_PairResult]:
    """One extraction batch (runs in the batcher's worker thread)."""
    scores = scorer.score(pairs)
    results = []
    for index in range(len(pairs)):
        confidence = float(scores.confidence[index])
        shift = None
        if scores.shift_values is not None and index not in scores.errors:
            shift = {name: float(values[index]) for name, values in scores.shift_values.items()}
        results.append(
            _PairResult(
                confidence=None if math.isnan(confidence) else confidence,
                abstain=None if scores.abstain is None else bool(scores.abstain[index]),
                error=scores.errors.get(index),
                shift_values=shift,
            )
        )
    return results


def _response_body(request: ScoreRequest, results, bundle, bundle_id: str, metrics) -> dict:
    out = []
    for pair, result in zip(request.pairs, results, strict=True):
        row = dict(pair.model_extra or {})
        row["confidence"] = result.confidence
        if result.abstain is not None:
            row["abstain"] = result.abstain
        if result.error is not None:
            row["error"] = result.error
        out.append(row)
    errors = sum(result.error is not None for result in results)
    metrics.pairs.labels(outcome="scored").inc(len(results) - errors)
    if errors:
        metrics.pairs.labels(outcome="error").inc(errors)
        metrics.errors.labels(kind="unscorable_pair").inc(errors)
    body: dict[str, Any] = {"bundle": bundle_id, "results": out}
    if bundle.shift_reference is not None:
        body["shift"] = _request_shift(bundle, results)
    return body


def _request_shift(bundle, results: list[_PairResult]) -> dict[str, Any] | None:
    """The shift check of this request's scored pairs as one batch (None if none scored)."""
    scored = [result.shift_values for result in results if result.shift_values is not None]
    if not scored:
        return None
    check = bundle.check_shift_values(
        {name: np.array([v[name] for v in scored]) for name in scored[0]}
    )
    untested = math.isnan(check.statistic)
    return {
        "statistic": None if untested else check.statistic,
        "p_value": None if untested else check.p_value,
        "shifted": check.shifted,
        "n": check.n,
        "message": check.message(),
    }


def _check_limits(request: ScoreRequest, settings: ServeSettings) -> None:
    if len(request.pairs) > settings.max_pairs:
        raise ServiceError(
            422,
            "invalid_request",
            f"pairs: at most {settings.max_pairs} pairs per request, got {len(request.pairs)}",
        )
    for index, pair in enumerate(request.pairs):
        if len(pair.response) > settings.max_response_chars:
            raise ServiceError(
                422,
                "invalid_request",
                f"pairs[{index}].response: longer than "
                f"the limit of {settings.max_response_chars} characters "
                f"({len(pair.response)})",
            )


def _retry_after(batcher: MicroBatcher, settings: ServeSettings) -> int:
    """Whole seconds until the queue has likely drained: batches ahead × mean batch time."""
    mean = batcher.seconds / batcher.batches if batcher.batches else 1.0
    return max(1, math.ceil(batcher.depth / settings.max_batch * mean))


def _bundle_identity(manifest: dict[str, Any], bundle_id: str) -> dict[str, Any]:
    keys = (
        "llm",
        "probe",
        "calibrator",
        "metrics",
        "abstention",
        "training",
        "created",
        "perturbprobe_version",
        "format_version",
    )
    identity = {"id": bundle_id}
    identity.update({key: manifest[key] for key in keys if key in manifest})
    identity["families"] = sorted(manifest.get("extractor", {}).get("families", {}))
    return identity


# ---- access and errors ----------------------------------------------------------------------


def _authorization(api_key: str | None):
    """A dependency that checks ``Authorization: Bearer <api_key>`` in constant time."""
    expected = None if api_key is None else hashlib.sha256(api_key.encode()).digest()

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        if not (hmac.compare_digest(given, expected) and scheme.lower() == "bearer"):
            raise ServiceError(
                401,
                "unauthorized",
                "missing or wrong API key; send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def _add_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = getattr(exc, "kind", None) or _STATUS_KINDS.get(exc.status_code, "error")
        metrics.errors.labels(kind=kind).inc()
        return JSONResponse(
            error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, kind, message = _describe_validation_error(exc.errors())
        metrics.errors.labels(kind=kind).inc()
        return JSONResponse(error_body(kind, message), status_code=status)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error on %s: %r", request.url.path, exc)
        metrics.errors.labels(kind="internal").inc()
        return JSONResponse(error_body("internal", _INTERNAL), status_code=500)


def _describe_validation_error(errors) -> tuple[int, str, str]:
    """(status, kind, one line naming the field) for pydantic's error list."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        context = first.get("ctx", {}).get("error", "")
        return 400, "invalid_json", f"request body is not valid JSON ({context})".replace(" ()", "")
    field = _field_name(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return 422, "invalid_request", f"{field}: {message}{more}"


def _field_name(location) -> str:
    """("body", "pairs", 3, "response") → "pairs[3].response"; the body itself → "body"."""
    name = ""
    for part in location[1:] if location and location[0] == "body" else location:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "body"
