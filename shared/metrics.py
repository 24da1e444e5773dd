"""Prometheus metrics of both roles, defined in one place.

Each process exposes only its own role's metrics: the gateway on its port at
``/metrics``, a worker on ``--metrics-port``. Names are part of the deployment
contract (Grafana dashboard, docs/deploy.md): change them only together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge(
            "ksc_gateway_sessions_active", "client sessions open on this gateway", registry=r
        )
        self.sessions_total = Counter(
            "ksc_gateway_sessions", "client sessions ended, by outcome", ["outcome"], registry=r
        )
        self.rejects_total = Counter(
            "ksc_gateway_rejects", "sessions refused, by reason", ["reason"], registry=r
        )
        self.queue_wait = Histogram(
            "ksc_gateway_queue_wait_seconds",
            "time from a session's request to a worker claiming it",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.final_latency = Histogram(
            "ksc_gateway_final_latency_seconds",
            "time from the client's EOS to the session's last message",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.partial_latency = Histogram(
            "ksc_gateway_partial_latency_seconds",
            "time from the newest audio chunk reaching Redis to a partial reaching the gateway",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.slots_total = Gauge("ksc_worker_slots_total", "decoder slots", registry=r)
        self.slots_free = Gauge("ksc_worker_slots_free", "decoder slots not in use", registry=r)
        self.sessions_total = Counter(
            "ksc_worker_sessions", "sessions decoded, by outcome", ["outcome"], registry=r
        )
        self.decode_rtf = Histogram(
            "ksc_worker_decode_rtf",
            "decoder CPU seconds per second of audio, per session",
            buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0),
            registry=r,
        )
        self.sessions_reclaimed_total = Counter(
            "ksc_worker_sessions_reclaimed", "sessions taken over from a dead worker", registry=r
        )
        self.decoder_restarts_total = Counter(
            "ksc_worker_decoder_restarts", "decoder processes that died mid-session", registry=r
        )
        self.word_alignment_failures_total = Counter(
            "ksc_worker_word_alignment_failures",
            "finals sent without word times because aligning their words failed",
            registry=r,
        )


def handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler serving ``registry`` in Prometheus' text format."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return metrics
