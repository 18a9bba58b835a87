"""Prometheus metrics, on a registry per app so several apps (tests) never collide."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from api.schemas import Channel

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "seesku_requests", "HTTP requests", ["route", "method", "channel", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "seesku_request_seconds",
            "HTTP request latency",
            ["route", "method", "channel"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.embed = Histogram(
            "seesku_embed_seconds",
            "model inference time per search photo",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decode = Histogram(
            "seesku_decode_seconds",
            "photo decode + preprocess time per search photo",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.index_size = Gauge("seesku_index_vectors", "vectors in the vector index", registry=self.registry)
        self.products = Gauge("seesku_catalog_products", "products in the catalogue", registry=self.registry)


class MetricsMiddleware:
    """Request count and latency by route template and channel (plain ASGI: no per-request task)."""

    CHANNELS = frozenset(c.value for c in Channel)

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # the route template, not the raw path, so product ids do not explode the label set
            template = getattr(scope.get("route"), "path", "unmatched")
            channel = "api"
            for name, value in scope.get("headers", ()):
                if name == b"x-channel":
                    channel = value.decode("latin-1")
                    channel = channel if channel in self.CHANNELS else "invalid"
            labels = (template, scope["method"], channel)
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
            self.metrics.requests.labels(*labels, str(status)).inc()
