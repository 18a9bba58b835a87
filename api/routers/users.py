"""Shopper events from every channel, the merged history, and personal recommendations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.concurrency import run_in_threadpool

from api.deps import get_shoppers
from api.presenters import history_event, recommendations_out
from api.schemas import USER_ID_PATTERN, ErrorResponse, EventBatch, EventsAccepted, Recommendations, UserHistory
from api.shoppers import ShopperService
from vision.recommender import Event, unix_time

router = APIRouter(prefix="/v1", tags=["shoppers"])
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="the shopper, the same on every channel")]
Shoppers = Annotated[ShopperService, Depends(get_shoppers)]


@router.post(
    "/events",
    response_model=EventsAccepted,
    responses={422: {"model": ErrorResponse}},
    summary="Record what shoppers viewed, carted, bought or clicked, on any channel",
)
async def add_events(batch: EventBatch, shoppers: Shoppers) -> EventsAccepted:
    events = [
        Event(e.user_id, e.product_id, e.type, e.channel.value, unix_time(e.timestamp), e.event_id)
        for e in batch.events
    ]
    added, duplicates = await run_in_threadpool(shoppers.add_events, events)
    return EventsAccepted(accepted=added, duplicates=duplicates)


@router.get(
    "/users/{user_id}/history", response_model=UserHistory, summary="The shopper's events, every channel merged"
)
async def history(
    user_id: UserId, shoppers: Shoppers, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> UserHistory:
    events = await run_in_threadpool(shoppers.history, user_id, limit)
    return UserHistory(user_id=user_id, events=[history_event(e) for e in events])


@router.get(
    "/users/{user_id}/recommendations",
    response_model=Recommendations,
    summary="The shopper's next likely products (popular products without history)",
)
async def recommendations(
    user_id: UserId, shoppers: Shoppers, k: Annotated[int, Query(ge=1, le=100)] = 10
) -> Recommendations:
    found = await run_in_threadpool(shoppers.recommendations, user_id, k)
    return recommendations_out(user_id, found)
