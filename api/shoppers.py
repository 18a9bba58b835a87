"""Shoppers: their events from every channel, the merged history, the shopper model's personal scores,
and recommendations (the shopper model's, or the popular products without history).

The shopper model runs on the runtime `SEESKU_INFERENCE` names (vision.runtimes.create_shopper_scorer);
without an exported model (no manifest in SEESKU_RECOMMENDER_DIR) nothing is personalised.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from api.catalog.ranking import Ranking
from api.catalog.records import ImageRecord, Product, UnknownProducts
from api.catalog.serving import RETIRE_AFTER_S
from api.catalog.store import CatalogStore
from vision.recommender import Event
from vision.runtimes import ShopperScorer


@dataclass
class Recommended:
    product: Product
    score: float
    first_image: ImageRecord | None


@dataclass
class Recommendations:
    source: str  # "model" or "popular"
    model: str | None  # the shopper model that served them (id:version); None for popular
    items: list[Recommended]


class ShopperService:
    def __init__(
        self,
        store: CatalogStore,
        ranking: Ranking,
        scorer: ShopperScorer | None,
        default_personal_weight: float,
        model_dir: Path | None = None,
    ):
        # The ranking's recommend/popular read the store and the scores only, never the index: a switch of
        # the product model leaves them as they are.
        self.store, self.ranking, self.scorer = store, ranking, scorer
        self.model_dir = model_dir  # where `scorer` came from
        self.default_personal_weight = default_personal_weight

    @property
    def model_id(self) -> str | None:
        return self.scorer.manifest.served_id if self.scorer is not None else None

    def add_events(self, events: Sequence[Event]) -> tuple[int, int]:
        """Store events in one transaction: (added, duplicates by event id). UnknownProducts, storing none,
        when an event names a product the catalogue does not have."""
        missing = self.store.missing_products([e.product_id for e in events])
        if missing:
            raise UnknownProducts([(i, e.product_id) for i, e in enumerate(events) if e.product_id in missing])
        return self.store.add_events(events)

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        return self.store.history(user_id, limit)

    def switch_model(self, scorer: ShopperScorer, model_dir: Path | None = None) -> str:
        """Score with `scorer` from now on (loaded first, while the current one keeps answering); the old one
        is closed once the requests that began on it have ended. Returns the new version's id."""
        scorer.load()
        old, self.scorer, self.model_dir = self.scorer, scorer, model_dir
        if old is not None:
            timer = threading.Timer(RETIRE_AFTER_S, old.close)
            timer.daemon = True
            timer.start()
        return scorer.manifest.served_id

    def personal_scores(self, user_id: str | None) -> dict[str, float] | None:
        """The shopper model's scores from the user's merged history; None when there is nothing to go on."""
        return self.scored(user_id)[0]

    def scored(self, user_id: str | None) -> tuple[dict[str, float] | None, str | None]:
        """(personal scores or None, the shopper model version that made them): one version for both."""
        scorer = self.scorer  # read once: a switch may replace it meanwhile
        if not user_id or scorer is None:
            return None, None
        history = self.store.history(user_id, scorer.manifest.max_len)
        return scorer.scores(history) or None, scorer.manifest.served_id

    def personalisation(
        self, user_id: str | None, weight: float | None
    ) -> tuple[dict[str, float] | None, float, str | None]:
        """What a search re-ranks by for this shopper: (scores or None, weight, the shopper model version that
        scored); weight None means the default (SEESKU_PERSONAL_WEIGHT), and 0 turns it off."""
        weight = self.default_personal_weight if weight is None else weight
        scores, model = self.scored(user_id) if weight > 0 else (None, None)
        return scores, weight, model if scores else None

    def recommendations(self, user_id: str, k: int) -> Recommendations:
        products = {p.product_id: p for p in self.store.all_products()}
        scores, model = self.scored(user_id)
        ranked = self.ranking.recommend(scores or {}, products, k)
        source = "model"
        if not ranked:
            ranked, source, model = self.ranking.popular(k), "popular", None
        images = self.store.images_of([pid for pid, _ in ranked])
        items = [Recommended(products[pid], score, (images.get(pid) or [None])[0]) for pid, score in ranked]
        return Recommendations(source, model, items)

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
