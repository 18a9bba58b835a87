"""Tagging jobs: upload a zip (or a CSV of paths under SEESKU_TAGGING_ROOT), follow it, fetch the results."""

from __future__ import annotations

import os
import tempfile
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import get_jobs, job_or_404
from api.errors import ApiError
from api.schemas import DuplicateGroup, DuplicateGroups, ErrorResponse, TaggingJob, TaggingJobList
from api.tagging.jobs import Job, JobRunner
from api.tagging.run import TagOptions
from api.tagging.sources import SourceError

router = APIRouter(prefix="/v1/tagging", tags=["tagging"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
            "text/csv": {
                "schema": {"type": "string", "description": "a 'path' column, relative to SEESKU_TAGGING_ROOT"}
            },
        },
    }
}


def to_schema(job: Job) -> TaggingJob:
    return TaggingJob(
        id=job.id,
        state=job.state,
        kind=job.kind,
        total=job.total,
        done=job.done,
        rate=job.rate,
        eta_s=job.eta_s,
        created=job.created,
        started=job.started,
        finished=job.finished,
        error=job.error,
        duplicate_groups=job.duplicate_groups,
        results_url=f"/v1/tagging/jobs/{job.id}/results",
    )


@router.post(
    "/jobs",
    status_code=202,
    response_model=TaggingJob,
    openapi_extra=UPLOAD_BODY,
    responses={400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}},
    summary="Start tagging a zip of photos, or a CSV of paths under the allowed folder",
)
async def create_job(
    request: Request,
    response: Response,
    jobs: Annotated[JobRunner, Depends(get_jobs)],
    k: Annotated[int, Query(ge=0, le=20, description="closest catalogue products per photo")] = 3,
    duplicate_threshold: Annotated[
        float,
        Query(ge=0.5, le=1.0, description="embedding cosine for near-duplicates (and layout correlation >= 0.92)"),
    ] = 0.90,
) -> TaggingJob:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    kinds = {"application/zip": "zip", "application/x-zip-compressed": "zip", "text/csv": "csv"}
    if content_type not in kinds:
        raise ApiError(415, "unsupported_media_type", "send the zip as application/zip or the path list as text/csv")
    limit = request.app.state.settings.max_tagging_upload_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, "upload_too_large", f"the upload is {length} bytes; the limit is {limit} bytes")
    # Streamed to disk, never held in memory whole.
    fd, staged = tempfile.mkstemp(prefix="upload-", dir=jobs.staging_dir)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "upload_too_large", f"the upload is larger than the limit of {limit} bytes")
                f.write(chunk)
        if not size:
            raise ApiError(400, "empty_upload", "the request body is empty")
        try:
            job = await run_in_threadpool(
                jobs.submit, kinds[content_type], staged, TagOptions(k=k, duplicate_threshold=duplicate_threshold)
            )
        except SourceError as exc:
            raise ApiError(400, "bad_tagging_input", str(exc)) from None
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    response.headers["Location"] = f"/v1/tagging/jobs/{job.id}"
    return to_schema(job)


@router.get("/jobs", response_model=TaggingJobList, summary="Recent tagging jobs, newest first")
async def list_jobs(
    jobs: Annotated[JobRunner, Depends(get_jobs)], limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> TaggingJobList:
    return TaggingJobList(jobs=[to_schema(j) for j in jobs.list(limit)])


@router.get(
    "/jobs/{job_id}",
    response_model=TaggingJob,
    responses={404: {"model": ErrorResponse}},
    summary="A job's state and progress",
)
async def get_job(job_id: str, jobs: Annotated[JobRunner, Depends(get_jobs)]) -> TaggingJob:
    return to_schema(job_or_404(jobs, job_id))


@router.get(
    "/jobs/{job_id}/results",
    responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}, 404: {"model": ErrorResponse}},
    summary="The tagged photos so far, as CSV or JSON lines",
)
async def job_results(
    job_id: str,
    jobs: Annotated[JobRunner, Depends(get_jobs)],
    format: Annotated[Literal["csv", "jsonl"], Query(description="csv or jsonl")] = "csv",
) -> Response:
    job = job_or_404(jobs, job_id)
    body = await run_in_threadpool(jobs.results, job, format)
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return Response(
        body, media_type=media, headers={"Content-Disposition": f'attachment; filename="tagging-{job.id}.{format}"'}
    )


@router.get(
    "/jobs/{job_id}/duplicates",
    response_model=DuplicateGroups,
    responses={404: {"model": ErrorResponse}},
    summary="Near-duplicate groups of a finished job",
)
async def job_duplicates(job_id: str, jobs: Annotated[JobRunner, Depends(get_jobs)]) -> DuplicateGroups:
    job = job_or_404(jobs, job_id)
    groups: dict[int, list[str]] = {}
    for row in await run_in_threadpool(jobs.rows, job):
        if row.get("duplicate_group"):
            groups.setdefault(row["duplicate_group"], []).append(row["path"])
    return DuplicateGroups(
        groups=[
            DuplicateGroup(
                id=gid, photos=paths, thumbnail_urls=[f"/v1/tagging/jobs/{job.id}/photos/{p}" for p in paths]
            )
            for gid, paths in sorted(groups.items())
        ]
    )


@router.get(
    "/jobs/{job_id}/photos/{key:path}",
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorResponse}},
    summary="A small JPEG of one photo of a job",
)
async def job_photo(job_id: str, key: str, jobs: Annotated[JobRunner, Depends(get_jobs)]) -> Response:
    from vision.preprocess import ImageError, thumbnail

    job = job_or_404(jobs, job_id)
    items = {item.key: item for item in await run_in_threadpool(jobs.items, job)}
    item = items.get(key)
    if item is None:
        raise ApiError(404, "photo_not_found", f"job {job_id} has no photo {key!r}")
    try:
        data = await run_in_threadpool(lambda: thumbnail(item.read(), 160))
    except (ImageError, OSError) as exc:
        raise ApiError(422, "unreadable_image", f"{key}: {exc}") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.delete(
    "/jobs/{job_id}",
    response_model=TaggingJob,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    summary="Cancel a queued or running job (its results so far are kept)",
)
async def cancel_job(job_id: str, jobs: Annotated[JobRunner, Depends(get_jobs)]) -> TaggingJob:
    job = job_or_404(jobs, job_id)
    if job.state not in ("queued", "running"):
        raise ApiError(409, "job_finished", f"job {job_id} is already {job.state}")
    jobs.cancel(job_id)
    return to_schema(jobs.get(job_id) or job)
