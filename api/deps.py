"""Shared state for the routers, as FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request

from api.catalog.service import CatalogService
from api.errors import ApiError
from api.metrics import Metrics


async def get_service(request: Request) -> CatalogService:
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        raise ApiError(503, "not_ready", "the model or the vector index is still loading; retry shortly")
    return service


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics
