"""The FastAPI app factory: wires settings, the catalogue service, routers, errors and metrics."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api import errors
from api.catalog.service import CatalogService
from api.metrics import Metrics, MetricsMiddleware
from api.routers import catalog_info, products, search
from api.settings import Settings, get_settings

log = logging.getLogger("seesku")


def start_service(settings: Settings) -> CatalogService:
    """Open the catalogue (checking the index against it) and import the samples into an empty one."""
    service = CatalogService(settings)
    service.open()
    if settings.load_samples and service.store.count_products() == 0 and settings.sample_catalog.exists():
        log.info("empty catalogue: importing the sample catalogue %s", settings.sample_catalog)
        service.import_csv(settings.sample_catalog)
    log.info(
        "seesku ready: model %s, %d products, %d vectors",
        service.model_id, service.store.count_products(), len(service.index),
    )
    return service


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = await run_in_threadpool(start_service, settings)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.service.close)

    app = FastAPI(
        title="seesku",
        summary="Visual product recognition: a photo in, the matching catalogue products out.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    errors.install(app)
    app.include_router(search.router)
    app.include_router(products.router)
    app.include_router(catalog_info.router)
    return app
