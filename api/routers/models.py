"""The served model versions, and switching them without a restart (api/model_switch.py): reads for
merchandisers, switches for admins."""

from __future__ import annotations

from pathlib import Path as FolderPath
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.errors import ApiError
from api.model_switch import ModelRequestError, ModelSwitcher
from api.schemas import ErrorResponse

router = APIRouter(prefix="/v1/models", tags=["models"])
Kind = Annotated[
    Literal["vision", "shopper"], Path(description="vision: the product embedder; shopper: the shopper model")
]


class ModelState(BaseModel):
    serving: str | None = Field(description="the version this replica answers with (id:version)")
    model_dir: str | None
    requested: str | None = Field(description="the folder asked for, while this replica is not serving it")
    state: Literal["serving", "switching", "failed"]
    progress: list[int] = Field(description="[photos embedded, photos to embed] for the new version")
    error: str | None


class ModelStates(BaseModel):
    vision: ModelState
    shopper: ModelState


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_dir: str = Field(min_length=1, description="an exported model folder on the servers' disk")


def _switcher(request: Request) -> ModelSwitcher:
    models = getattr(request.app.state, "models", None)
    if models is None:
        raise ApiError(503, "not_ready", "the service is still starting; retry shortly")
    return models


def _states(models: ModelSwitcher) -> ModelStates:
    return ModelStates(**{kind: ModelState(**vars(state)) for kind, state in models.states.items()})


@router.get("", response_model=ModelStates, summary="The model versions this replica serves, and any switch")
def list_models(request: Request) -> ModelStates:
    return _states(_switcher(request))


@router.put(
    "/{kind}",
    status_code=202,
    response_model=ModelStates,
    responses={422: {"model": ErrorResponse}},
    summary="Serve another model version, on every replica, without a restart",
)
async def switch_model(kind: Kind, body: SwitchRequest, request: Request) -> ModelStates:
    """The current version keeps answering while the new one is prepared (the catalogue embedded and
    indexed for a new embedder); then every later answer is the new version's, named in its `model`.
    Follow it with GET /v1/models."""
    models = _switcher(request)
    try:
        await run_in_threadpool(models.request, kind, FolderPath(body.model_dir))
    except ModelRequestError as exc:
        raise ApiError(422, "bad_model", str(exc)) from None
    return _states(models)
