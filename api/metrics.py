"""Prometheus metrics, on a registry per app so several apps (tests) never collide."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "seesku_requests", "HTTP requests", ["route", "method", "channel", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "seesku_request_seconds", "HTTP request latency", ["route", "method", "channel"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.embed = Histogram(
            "seesku_embed_seconds", "model inference time per search photo", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decode = Histogram(
            "seesku_decode_seconds", "photo decode + preprocess time per search photo", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.index_size = Gauge("seesku_index_vectors", "vectors in the vector index", registry=self.registry)
        self.products = Gauge("seesku_catalog_products", "products in the catalogue", registry=self.registry)


class MetricsMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics: Metrics = request.app.state.metrics
            route = request.scope.get("route")
            # the route template, not the raw path, so product ids do not explode the label set
            template = getattr(route, "path", "unmatched")
            channel = request.headers.get("x-channel", "api")
            channel = channel if channel in ("web", "app", "api", "kiosk", "batch") else "invalid"
            labels = (template, request.method, channel)
            metrics.latency.labels(*labels).observe(time.perf_counter() - start)
            metrics.requests.labels(*labels, str(status)).inc()
