"""POST /v1/search: a shopper's photo in, ranked products and categories out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError

from api.catalog.service import CatalogService, SearchResult
from api.deps import get_metrics, get_service
from api.errors import ApiError
from api.metrics import Metrics
from api.routers.products import image_urls
from api.schemas import Categories, CategoryRef, CategoryScore, Channel, ErrorResponse, Match, ModelInfo, SearchResponse, Timings
from api.uploads import read_search_photo

router = APIRouter(prefix="/v1", tags=["search"])

PHOTO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "k": {"type": "integer", "minimum": 1, "maximum": 100},
                        "category": {"type": "string"},
                        "user_id": {"type": "string"},
                        "personal_weight": {"type": "number", "minimum": 0, "maximum": 10},
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class SearchParams(BaseModel):
    k: int = Field(10, ge=1, le=100)
    category: str | None = Field(None, min_length=1, max_length=100)
    user_id: str | None = Field(None, min_length=1, max_length=128)
    personal_weight: float | None = Field(None, ge=0, le=10)


def to_response(result: SearchResult, service: CatalogService, channel: Channel) -> SearchResponse:
    matches = []
    for m in result.matches:
        url, thumb = image_urls(m.product.product_id, m.image_id)
        matches.append(Match(
            product_id=m.product.product_id,
            name=m.product.name,
            category=CategoryRef(fine=m.product.fine_category, coarse=m.product.coarse_category),
            score=round(m.score, 6),
            visual_score=round(m.visual_score, 6),
            category_probability=None if m.category_probability is None else round(m.category_probability, 6),
            personal_score=None if m.personal_score is None else round(m.personal_score, 6),
            image_url=url,
            thumbnail_url=thumb,
        ))
    return SearchResponse(
        matches=matches,
        categories=Categories(
            fine=[CategoryScore(name=n, probability=round(p, 6)) for n, p in result.fine],
            coarse=[CategoryScore(name=n, probability=round(p, 6)) for n, p in result.coarse],
        ),
        timings_ms=Timings(**{k: round(v, 3) for k, v in result.timings_ms.items()}),
        model=ModelInfo(id=service.manifest.model_id, version=service.manifest.version),
        channel=channel,
    )


@router.post(
    "/search",
    response_model=SearchResponse,
    openapi_extra=PHOTO_BODY,
    responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    summary="Find the catalogue products in a photo",
)
async def search(
    request: Request,
    service: Annotated[CatalogService, Depends(get_service)],
    metrics: Annotated[Metrics, Depends(get_metrics)],
    k: Annotated[int | None, Query(ge=1, le=100, description="products to return (default 10)")] = None,
    category: Annotated[str | None, Query(description="only products of this fine or coarse category")] = None,
    user_id: Annotated[str | None, Query(description="the shopper, for personal re-ranking")] = None,
    personal_weight: Annotated[float | None, Query(ge=0, le=10, description="weight of the personal score (default SEESKU_PERSONAL_WEIGHT; 0 = visual order)")] = None,
    x_channel: Annotated[Channel, Header(description="where the photo came from")] = Channel.api,
) -> Response:
    data, fields = await read_search_photo(request, service.settings.max_upload_bytes)
    names = ("k", "category", "user_id", "personal_weight")
    raw = {name: value for name, value in zip(names, (k, category, user_id, personal_weight)) if value is not None}
    for name in names:
        if name not in raw and name in fields:
            raw[name] = fields[name]
    try:
        params = SearchParams(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ApiError(
            422, "validation_error", f"{first['loc'][0]}: {first['msg']}",
            [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()],
        ) from None
    result = await run_in_threadpool(
        service.search, data, params.k, params.category, 5, params.user_id, params.personal_weight,
    )
    metrics.decode.observe(result.timings_ms["decode"] / 1e3)
    metrics.embed.observe(result.timings_ms["embed"] / 1e3)
    # Already a validated SearchResponse: serialise it once instead of letting FastAPI re-validate it.
    return Response(to_response(result, service, x_channel).model_dump_json(), media_type="application/json")
