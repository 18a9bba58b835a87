"""The FastAPI app factory: wires settings, the catalogue service, routers, errors and metrics."""

from __future__ import annotations

import dataclasses
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from api import errors
from api.auth import KeyStore, authorise, is_loopback
from api.catalog.csv_io import import_catalog_csv, import_events_csv
from api.catalog.service import CatalogService
from api.limits import create_rate_limits
from api.middleware.logs import RequestLogMiddleware
from api.middleware.metrics import Metrics, MetricsMiddleware
from api.middleware.security_headers import SecurityHeadersMiddleware
from api.middleware.timeouts import TimeoutMiddleware
from api.model_switch import ModelSwitcher, requested_models
from api.routers import catalog_info, models, pages, products, review, search, tagging, users
from api.settings import Settings, get_settings
from api.shoppers import ShopperService

log = logging.getLogger("seesku")


def start_service(settings: Settings) -> CatalogService:
    """Open the catalogue (checking the index against it) with the model version the replicas were asked to
    serve (api/model_switch.py; the configured one without a request), and import the samples into an empty one."""
    service = CatalogService(settings, model_dir=requested_models(settings.database()).get("vision"))
    service.open()
    service.load_detector()
    if settings.load_samples and service.count_products() == 0 and settings.sample_catalog.exists():
        log.info("empty catalogue: importing the sample catalogue %s", settings.sample_catalog)
        import_catalog_csv(service, settings.sample_catalog)
        events = settings.sample_catalog.parent / "events.csv"
        if events.exists():
            log.info("importing the synthetic sample shopper events %s", events)
            import_events_csv(service, events)
    log.info(
        "seesku ready: model %s, %d products, %d vectors", service.model_id, service.count_products(), service.vectors
    )
    return service


def start_shoppers(settings: Settings, service: CatalogService) -> ShopperService:
    """Shopper events and the shopper model, over the catalogue's store and ranking rule."""
    folder = requested_models(settings.database()).get("shopper") or settings.recommender_dir
    scorer = settings.create_shopper_scorer(folder)
    return ShopperService(service.store, service.ranking, scorer, settings.personal_weight, folder if scorer else None)


def start_jobs(settings: Settings, service: CatalogService):
    """The tagging-job runner, sharing the service's model and catalogue."""
    from api.tagging.jobs import JobRunner, JobStore
    from api.tagging.run import Tagger, TagOptions

    def tagger(options: TagOptions) -> Tagger:
        # The server's setting, not the job's: clients cannot choose it, and a job saved by an older version
        # resumes with today's.
        options = dataclasses.replace(options, workers=settings.tagging_workers)
        return Tagger(service.embedder, service.tag_matcher(), options, settings.limits(), start_method="spawn")

    store = JobStore(settings.database(), settings.data_dir / "jobs")
    runner = JobRunner(store, tagger, settings.tagging_root, settings.max_upload_bytes, settings.tagging_lease_s)
    runner.start()
    return runner


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = await run_in_threadpool(start_service, settings)
        app.state.shoppers = await run_in_threadpool(start_shoppers, settings, app.state.service)
        app.state.jobs = await run_in_threadpool(start_jobs, settings, app.state.service)
        app.state.models = ModelSwitcher(settings.database(), app.state.service, app.state.shoppers, settings)
        app.state.models.start()
        try:
            yield
        finally:
            await run_in_threadpool(app.state.models.stop)
            await run_in_threadpool(app.state.jobs.stop)
            app.state.jobs.close()
            app.state.shoppers.close()
            await run_in_threadpool(app.state.service.close)
            app.state.keys.close()

    app = FastAPI(
        title="seesku",
        summary="Visual product recognition: a photo in, the matching catalogue products out.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.keys = KeyStore(settings.database())
    app.state.require_keys = (
        settings.require_keys if settings.require_keys is not None else not is_loopback(settings.host)
    )
    app.state.rate_limits = create_rate_limits(
        settings.database(), settings.rate_limit_per_s, settings.rate_limit_burst
    )
    if app.state.require_keys:
        log.info("API keys required (create one with `seesku keys create`)")
    else:
        log.warning(
            "API keys NOT required: listening on %s (loopback, the local demo); any other address requires them",
            settings.host,
        )
    app.add_middleware(
        TimeoutMiddleware,
        body_idle_timeout_s=settings.body_idle_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    )  # innermost: its 408/504 are logged and counted
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestLogMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Channel"],
        )
    errors.install(app)
    shopper, merchandiser = Depends(authorise("search")), Depends(authorise("search", "catalog:write"))
    app.include_router(search.router, dependencies=[shopper])
    app.include_router(products.router, dependencies=[merchandiser])
    app.include_router(users.router, dependencies=[shopper])
    merchandiser_only = Depends(authorise("catalog:write", "catalog:write"))
    app.include_router(tagging.router, dependencies=[merchandiser_only])
    app.include_router(review.router, dependencies=[merchandiser_only])
    app.include_router(models.router, dependencies=[Depends(authorise("catalog:write", "admin"))])
    app.include_router(catalog_info.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.WEB / "static"), name="static")
    return app
