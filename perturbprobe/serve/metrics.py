"""The service's Prometheus metrics, in a registry of their own (one per app, so several apps
in one process — tests — do not share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Counters, gauges and histograms of one scoring service.

    ``perturbprobe_requests_total{endpoint, status}``, ``perturbprobe_pairs_total{outcome}``
    (``scored`` / ``error``), ``perturbprobe_errors_total{kind}`` (request-level kinds such as
    ``invalid_request``, ``queue_full``, ``timeout``, and ``unscorable_pair``),
    ``perturbprobe_request_latency_seconds`` (``/v1/score``, end to end),
    ``perturbprobe_batch_size`` (pairs per extraction batch), ``perturbprobe_batch_seconds``
    (time of one extraction batch), ``perturbprobe_queue_depth`` (pairs waiting) and
    ``perturbprobe_in_flight_requests``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "perturbprobe_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.pairs = Counter(
            "perturbprobe_pairs",
            "Pairs answered by /v1/score, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "perturbprobe_errors",
            "Errors by kind (request-level and unscorable pairs).",
            ["kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "perturbprobe_request_latency_seconds",
            "End-to-end latency of /v1/score requests.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "perturbprobe_batch_size",
            "Pairs per extraction batch (micro-batching merges concurrent requests).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "perturbprobe_batch_seconds",
            "Time to score one extraction batch.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "perturbprobe_queue_depth", "Pairs waiting to be scored.", registry=self.registry
        )
        self.in_flight = Gauge(
            "perturbprobe_in_flight_requests",
            "/v1/score requests being handled.",
            registry=self.registry,
        )
