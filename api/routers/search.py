"""POST /v1/search: a shopper's photo in, ranked products and categories out."""

from __future__ import annotations

import pydantic_core
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError

from api.catalog.objects import DetectorUnavailable
from api.catalog.service import CatalogService, SearchResult
from api.deps import get_service, get_shoppers
from api.errors import ApiError, validation_error
from api.presenters import search_answer
from api.schemas import Channel, ErrorResponse, SearchResponse
from api.shoppers import ShopperService
from api.uploads import read_search_photo

router = APIRouter(prefix="/v1", tags=["search"])


class SearchParams(BaseModel):
    """A search's options, from the query string or, for multipart uploads, from form fields (the query
    string wins). The route validates them itself (see `search`); this model is also their OpenAPI contract."""

    k: int = Field(10, ge=1, le=100, description="products to return")
    category: str | None = Field(
        None, min_length=1, max_length=100, description="only products of this fine or coarse category"
    )
    user_id: str | None = Field(None, min_length=1, max_length=128, description="the shopper, for personal re-ranking")
    personal_weight: float | None = Field(
        None, ge=0, le=10, description="weight of the personal score (default SEESKU_PERSONAL_WEIGHT; 0 = visual order)"
    )
    objects: bool = Field(
        False, description="also find each product in the photo and answer for each (`objects`: box, score, matches)"
    )


PARAM_SCHEMAS = SearchParams.model_json_schema()["properties"]
CHANNELS = [c.value for c in Channel]
CHANNEL_SCHEMA = {"type": "string", "enum": CHANNELS, "default": Channel.api.value}
SEARCH_OPENAPI = {
    "parameters": [
        *(
            {"name": name, "in": "query", "required": False, "description": schema["description"], "schema": schema}
            for name, schema in PARAM_SCHEMAS.items()
        ),
        {
            "name": "x-channel",
            "in": "header",
            "required": False,
            "description": "where the photo came from",
            "schema": CHANNEL_SCHEMA,
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}, **PARAM_SCHEMAS},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


def search_params(request: Request, fields: dict[str, str]) -> tuple[SearchParams, Channel]:
    """The options and the channel of a search, or a 422 that names each bad one."""
    query = request.query_params
    raw, where = {}, {}
    for name in SearchParams.model_fields:
        value = query.get(name)
        if value is not None:
            raw[name], where[name] = value, "query"
        elif name in fields:
            raw[name], where[name] = fields[name], "body"
    errors = []
    try:
        params = SearchParams.model_validate(raw)
    except ValidationError as exc:
        errors += [{"loc": [where[e["loc"][0]], *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    channel = request.headers.get("x-channel", Channel.api.value)
    if channel not in CHANNELS:
        errors.append(
            {
                "loc": ["header", "x-channel"],
                "type": "enum",
                "msg": f"Input should be one of {', '.join(map(repr, CHANNELS))}",
            }
        )
    if errors:
        raise validation_error(errors)
    return params, Channel(channel)


def run_search(catalog: CatalogService, shoppers: ShopperService, data: bytes, params: SearchParams) -> SearchResult:
    """The search itself, personalised for the shopper when one is named (one worker thread for both)."""
    personal, weight, shopper_model = shoppers.personalisation(params.user_id, params.personal_weight)
    result = catalog.search(data, params.k, params.category, 5, personal, weight, params.objects)
    result.personal_model = shopper_model
    return result


@router.post(
    "/search",
    response_model=SearchResponse,
    openapi_extra=SEARCH_OPENAPI,
    responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    summary="Find the catalogue products in a photo",
)
async def search(request: Request) -> Response:
    # The request alone, its options validated by search_params: FastAPI solving five declared parameters
    # and two dependencies cost about 0.1 ms a request (the app measured in-process, hot: 0.55 -> 0.45 ms).
    service = await get_service(request)
    data, fields = await read_search_photo(request, service.settings.max_upload_bytes)
    params, channel = search_params(request, fields)
    try:
        result = await run_in_threadpool(run_search, service, await get_shoppers(request), data, params)
    except DetectorUnavailable as exc:
        raise ApiError(503, "detector_unavailable", f"objects=true cannot be answered: {exc}") from None
    metrics = request.app.state.metrics
    metrics.decode.observe(result.timings_ms["decode"] / 1e3)
    metrics.embed.observe(result.timings_ms["embed"] / 1e3)
    answer = search_answer(result, result.manifest, channel.value)  # the version that answered
    return Response(pydantic_core.to_json(answer), media_type="application/json")
