"""Shared state for the routers, as FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request

from api.catalog.service import CatalogService
from api.errors import ApiError
from api.middleware.metrics import Metrics
from api.shoppers import ShopperService
from api.tagging.jobs import Job, JobRunner

NOT_READY = "the model or the vector index is still loading; retry shortly"


async def get_service(request: Request) -> CatalogService:
    service = getattr(request.app.state, "service", None)
    if service is None or not service.ready:
        raise ApiError(503, "not_ready", NOT_READY)
    return service


async def get_shoppers(request: Request) -> ShopperService:
    shoppers = getattr(request.app.state, "shoppers", None)
    if shoppers is None:
        raise ApiError(503, "not_ready", NOT_READY)
    return shoppers


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_jobs(request: Request) -> JobRunner:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise ApiError(503, "not_ready", "the tagging service is still starting; retry shortly")
    return jobs


def job_or_404(jobs: JobRunner, job_id: str) -> Job:
    job = jobs.get(job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"no tagging job {job_id!r}")
    return job
