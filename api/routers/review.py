"""Reviewing a finished tagging job: its tagged photos page by page with what needs a person, a decision per
photo, and the apply that turns the decisions into catalogue changes (api/tagging/review.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from api.catalog.service import CatalogService, Photo
from api.deps import get_jobs, get_service, job_or_404
from api.errors import ApiError
from api.schemas import ApplyResult, DecisionsIn, DecisionsRecorded, ErrorResponse, ReviewFilter, ReviewPage
from api.tagging.jobs import Job, JobRunner
from api.tagging.review import (
    AlreadyApplied,
    Decision,
    DecisionError,
    DecisionStore,
    apply_decisions,
    check_decisions,
    review_reasons,
)

router = APIRouter(prefix="/v1/tagging", tags=["tagging"])
Jobs = Annotated[JobRunner, Depends(get_jobs)]
ERRORS = {404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


def _finished(jobs: JobRunner, job_id: str) -> Job:
    job = job_or_404(jobs, job_id)
    if job.state != "done":
        raise ApiError(409, "job_not_done", f"job {job_id} is {job.state}; review a job once it is done")
    return job


@router.get("/jobs/{job_id}/review", response_model=ReviewPage, responses=ERRORS, summary="A page of a job's photos")
def review_page(
    job_id: str,
    jobs: Jobs,
    filter: Annotated[ReviewFilter, Query(description="needs_review: any reason a person should look")] = "all",
    sort: Annotated[Literal["order", "confidence", "-confidence"], Query()] = "order",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 60,
) -> ReviewPage:
    job = _finished(jobs, job_id)
    decisions = DecisionStore(jobs.store.engine).all(job_id)
    rows = [{**row, "review_reasons": review_reasons(row)} for row in jobs.rows(job)]
    tests = {
        "all": lambda r: True,
        "needs_review": lambda r: bool(r["review_reasons"]),
        "undecided": lambda r: r["path"] not in decisions,
    }
    counts = {name: sum(map(_test(name, tests), rows)) for name in ReviewFilter.__args__}
    chosen = [r for r in rows if _test(filter, tests)(r)]
    if sort != "order":
        chosen.sort(key=lambda r: r.get("fine_probability") or 0.0, reverse=sort.startswith("-"))
    page = chosen[offset : offset + limit]
    for row in page:
        row["thumbnail_url"] = f"/v1/tagging/jobs/{job_id}/photos/{row['path']}"
        row["decision"] = vars(decisions[row["path"]]) if row["path"] in decisions else None
    return ReviewPage(job_id=job_id, total=len(chosen), offset=offset, rows=page, counts=counts)


def _test(name: str, tests: dict):
    return tests.get(name) or (lambda r: name in r["review_reasons"])


@router.post(
    "/jobs/{job_id}/decisions", response_model=DecisionsRecorded, responses=ERRORS, summary="Decide photos of a job"
)
def record_decisions(job_id: str, body: DecisionsIn, jobs: Jobs) -> DecisionsRecorded:
    """Add a photo to a product, create a product from it, or skip it; a later decision on a photo replaces
    an earlier one until an apply has carried it out. All of the request is stored, or none of it."""
    job = _finished(jobs, job_id)
    decisions = [
        Decision(d.key, d.action, d.product_id, d.product.model_dump() if d.product else None) for d in body.decisions
    ]
    store = DecisionStore(jobs.store.engine)
    try:
        check_decisions(decisions, {row["path"] for row in jobs.rows(job) if row.get("status") == "ok"})
        store.record(job_id, decisions)
    except DecisionError as exc:
        status = 409 if isinstance(exc, AlreadyApplied) else 422
        raise ApiError(status, "bad_decision", str(exc)) from None
    pending = sum(d.outcome is None for d in store.all(job_id).values())
    return DecisionsRecorded(recorded=len(decisions), pending=pending)


@router.post("/jobs/{job_id}/apply", response_model=ApplyResult, responses=ERRORS, summary="Apply a job's decisions")
async def apply_job(
    job_id: str,
    jobs: Jobs,
    service: Annotated[CatalogService, Depends(get_service)],
    max_products: Annotated[
        int | None, Query(ge=1, le=10_000, description="apply this many products and say how many remain")
    ] = None,
) -> ApplyResult:
    """Each product in its own transaction, searchable at once; applying again changes nothing more. A
    product that fails (deleted since, a photo refused, an id taken by another product) is reported with
    why, and the others go on."""
    job = _finished(jobs, job_id)
    items = {item.key: item for item in await run_in_threadpool(jobs.items, job)}
    report = await run_in_threadpool(
        apply_decisions, DecisionStore(jobs.store.engine), job_id, items, service, Photo, max_products
    )
    return ApplyResult(**vars(report))
