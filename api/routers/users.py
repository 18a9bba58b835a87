"""Shopper events from every channel, the merged history, and personal recommendations."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool

from api.catalog.service import CatalogService
from api.catalog.store import Event
from api.deps import get_service
from api.errors import ApiError
from api.personal import softmax_shares
from api.routers.products import image_urls
from api.schemas import (
    USER_ID_PATTERN, CategoryRef, ErrorResponse, EventBatch, EventsAccepted, HistoryEvent, Recommendation,
    Recommendations, UserHistory,
)

router = APIRouter(prefix="/v1", tags=["shoppers"])
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="the shopper, the same on every channel")]


def _unix(ts: datetime) -> float:
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


@router.post("/events", response_model=EventsAccepted, responses={422: {"model": ErrorResponse}},
             summary="Record what shoppers viewed, carted, bought or clicked, on any channel")
async def add_events(batch: EventBatch, service: Annotated[CatalogService, Depends(get_service)]) -> EventsAccepted:
    missing = await run_in_threadpool(service.store.missing_products, [e.product_id for e in batch.events])
    if missing:
        bad = [{"event": i, "product_id": e.product_id} for i, e in enumerate(batch.events) if e.product_id in missing]
        raise ApiError(422, "unknown_product",
                       f"event {bad[0]['event']}: unknown product {bad[0]['product_id']!r} (nothing was stored)", bad)
    events = [Event(e.user_id, e.product_id, e.type, e.channel.value, _unix(e.timestamp), e.event_id) for e in batch.events]
    added, duplicates = await run_in_threadpool(service.store.add_events, events)
    return EventsAccepted(accepted=added, duplicates=duplicates)


@router.get("/users/{user_id}/history", response_model=UserHistory, summary="The shopper's events, every channel merged")
async def history(user_id: UserId, service: Annotated[CatalogService, Depends(get_service)],
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> UserHistory:
    events = await run_in_threadpool(service.store.history, user_id, limit)
    return UserHistory(user_id=user_id, events=[
        HistoryEvent(product_id=e.product_id, type=e.type, channel=e.channel,
                     timestamp=datetime.fromtimestamp(e.ts, timezone.utc), event_id=e.event_id) for e in events
    ])


@router.get("/users/{user_id}/recommendations", response_model=Recommendations,
            summary="The shopper's next likely products (popular products without history)")
async def recommendations(user_id: UserId, service: Annotated[CatalogService, Depends(get_service)],
                          k: Annotated[int, Query(ge=1, le=100)] = 10) -> Recommendations:
    return await run_in_threadpool(_recommend, service, user_id, k)


def _recommend(service: CatalogService, user_id: str, k: int) -> Recommendations:
    products = {p.product_id: p for p in service.store.all_products()}
    scores = service.personal_scores(user_id) or {}
    scored = [(pid, s) for pid, s in scores.items() if pid in products]
    if scored:
        shares = softmax_shares([s for _, s in scored])
        ranked = sorted(zip([pid for pid, _ in scored], shares), key=lambda r: -r[1])[:k]
        source, model = "model", f"{service.personal.manifest.model_id}:{service.personal.manifest.version}"
    else:
        popular = service.store.popular_products(k)
        total = sum(n for _, n in popular) or 1
        ranked, source, model = [(pid, n / total) for pid, n in popular], "popular", None
    out = []
    images = service.store.images_of([pid for pid, _ in ranked])
    for pid, score in ranked:
        p = products[pid]
        first = images.get(pid)
        out.append(Recommendation(
            product_id=pid, name=p.name, category=CategoryRef(fine=p.fine_category, coarse=p.coarse_category),
            score=round(score, 6), thumbnail_url=image_urls(pid, first[0].image_id)[1] if first else None,
        ))
    return Recommendations(user_id=user_id, source=source, model=model, recommendations=out)
