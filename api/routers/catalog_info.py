"""Categories, health, readiness and metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import authorise
from api.catalog.service import CatalogService
from api.deps import get_metrics, get_service
from api.middleware.metrics import Metrics
from api.schemas import CategoryList, CoarseCategory, FineCategory, Health, ModelInfo, Readiness

router = APIRouter()


@router.get(
    "/v1/categories", response_model=CategoryList, tags=["catalogue"], dependencies=[Depends(authorise("search"))]
)
def categories(service: Annotated[CatalogService, Depends(get_service)]) -> CategoryList:
    fine = [FineCategory(name=f, coarse=c, products=n) for f, c, n in service.categories()]
    coarse: dict[str, int] = {}
    for f in fine:
        coarse[f.coarse] = coarse.get(f.coarse, 0) + f.products
    return CategoryList(
        fine=fine,
        coarse=[CoarseCategory(name=n, products=c) for n, c in sorted(coarse.items())],
        model_fine_labels=service.manifest.fine_labels,
        model_coarse_labels=service.manifest.coarse_labels,
    )


@router.get("/healthz", response_model=Health, tags=["operations"])
def healthz() -> Health:
    """The process is up (liveness)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, tags=["operations"], responses={503: {"model": Readiness}})
def readyz(request: Request):
    """The model and the vector index are loaded (readiness); 503 with the reason otherwise."""
    service: CatalogService | None = getattr(request.app.state, "service", None)
    startup_error = getattr(request.app.state, "startup_error", None)
    if service is None:
        body = Readiness(
            ready=False,
            model_loaded=False,
            index_loaded=False,
            products=0,
            vectors=0,
            model=ModelInfo(id="", version=""),
            reason=startup_error or "starting",
        )
        return JSONResponse(body.model_dump(), status_code=503)
    embedder_problem = service.embedder.health()
    model_loaded, index_loaded = embedder_problem is None, service.ready
    reason = None if model_loaded and index_loaded else (startup_error or embedder_problem or "vector index not loaded")
    body = Readiness(
        ready=reason is None,
        model_loaded=model_loaded,
        index_loaded=index_loaded,
        products=service.count_products(),
        vectors=service.vectors,
        model=ModelInfo(id=service.manifest.model_id, version=service.manifest.version),
        reason=reason,
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", tags=["operations"], response_class=Response, dependencies=[Depends(authorise("admin"))])
def metrics(request: Request, metrics: Annotated[Metrics, Depends(get_metrics)]) -> Response:
    service: CatalogService | None = getattr(request.app.state, "service", None)
    if service is not None and service.ready:
        metrics.index_size.set(service.vectors)
        metrics.products.set(service.count_products())
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
