"""Model switches without a restart, for both models (the product embedder and the shopper model), on every
replica: the version each kind should serve is one row of `served_models`, shared by the replicas.

`PUT /v1/models/{kind}` writes the row; every replica's `ModelSwitcher` follows it (its own at once, the
others within `interval_s`): it brings the new version up beside the serving one, which keeps answering
(for the embedder: the catalogue embedded and indexed for it, api/catalog/serving.py), then switches in one
step. A replica that starts serves the requested version from the start. A version that fails to load
is reported, and the replica keeps serving what it served; the request stays until it is changed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select

from api.db import tables as db
from api.db.engine import dialect_insert, reading
from vision.manifest import ModelManifest
from vision.recommender import RecommenderManifest

log = logging.getLogger("seesku.models")
KINDS = {"vision": ModelManifest, "shopper": RecommenderManifest}


class ModelRequestError(ValueError):
    pass


def requested_models(engine: Engine) -> dict[str, Path]:
    """kind -> the model folder every replica should serve."""
    t = db.served_models
    with reading(engine) as conn:
        return {kind: Path(folder) for kind, folder in conn.execute(select(t.c.kind, t.c.model_dir))}


def request_model(engine: Engine, kind: str, model_dir: Path) -> None:
    """Ask every replica to serve `model_dir` (made absolute: the replicas share a disk layout, not a working
    directory) for `kind`; ModelRequestError when it holds no such model."""
    model_dir = model_dir.resolve()
    if kind not in KINDS:
        raise ModelRequestError(f"unknown model kind {kind!r}; one of {', '.join(KINDS)}")
    try:
        KINDS[kind].load(model_dir)
    except Exception as exc:  # missing, unreadable or not this kind's manifest
        raise ModelRequestError(f"{model_dir} holds no {kind} model: {exc}") from None
    insert = dialect_insert(engine)(db.served_models).values(
        kind=kind, model_dir=str(model_dir), requested_at=time.time()
    )
    with engine.begin() as conn:
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["kind"],
                set_={"model_dir": insert.excluded.model_dir, "requested_at": insert.excluded.requested_at},
            )
        )


@dataclass
class SwitchState:
    serving: str | None  # the version this replica answers with
    model_dir: str | None
    requested: str | None = None  # the folder asked for, when this replica is not serving it yet
    state: str = "serving"  # serving | switching | failed
    progress: list[int] = field(default_factory=lambda: [0, 0])  # photos embedded for the new version
    error: str | None = None


class ModelSwitcher:
    """This replica's side of the switches: follows `served_models` and switches the service and the
    shoppers to what it asks for, one kind at a time."""

    def __init__(self, engine: Engine, service, shoppers, settings, interval_s: float = 2.0):
        self.engine, self.service, self.shoppers, self.settings = engine, service, shoppers, settings
        self.interval_s = interval_s
        self.states = {
            "vision": SwitchState(service.model_id, str(service.serving.model_dir)),
            "shopper": SwitchState(shoppers.model_id, str(shoppers.model_dir) if shoppers.model_dir else None),
        }
        self._failed: dict[str, str] = {}  # kind -> folder that failed: not retried until the request changes
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="seesku-models", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def request(self, kind: str, model_dir: Path) -> None:
        request_model(self.engine, kind, model_dir)
        self._failed.pop(kind, None)  # asked again: try again, here (other replicas retry a new folder only)
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for kind, folder in requested_models(self.engine).items():
                    if str(folder) not in (self.states[kind].model_dir, self._failed.get(kind)):
                        self._switch(kind, folder)
            except Exception as exc:  # the database is away: look again later
                log.warning("cannot read the requested models: %s", exc)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def _switch(self, kind: str, folder: Path) -> None:
        state = self.states[kind]
        state.requested, state.state, state.error, state.progress = str(folder), "switching", None, [0, 0]
        log.warning("switching the %s model to %s", kind, folder)
        try:
            if kind == "vision":
                serving = self.service.switch_model(folder, lambda done, total: state.progress.__setitem__(
                    slice(None), [done, total]))  # fmt: skip
            else:
                scorer = self.settings.create_shopper_scorer(folder)
                if scorer is None:
                    raise ModelRequestError(f"{folder} holds no shopper model")
                serving = self.shoppers.switch_model(scorer, folder)
        except Exception as exc:  # a bad model must not take the replica down: it keeps serving the old one
            log.exception("switching the %s model to %s failed", kind, folder)
            self._failed[kind] = str(folder)
            state.state, state.error = "failed", str(exc)
            return
        self.states[kind] = SwitchState(serving, str(folder), progress=state.progress)  # what it took
