"""Shopper events in the catalogue's database: one history per user across channels (part of SqlCatalogStore)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from api.db import tables as db
from vision.recommender import Event

EVENT_FIELDS = (
    db.events.c.user_id,
    db.events.c.product_id,
    db.events.c.type,
    db.events.c.channel,
    db.events.c.ts,
    db.events.c.event_id,
)


class SqlEvents:
    """The event half of `CatalogStore`; the store provides `_tx`, `_query` and `_insert`."""

    def add_events(self, new: Sequence[Event]) -> tuple[int, int]:
        """Store events in one transaction; an event_id seen before is ignored. Returns (added, duplicates)."""
        statement = self._insert(db.events).on_conflict_do_nothing(index_elements=["event_id"])
        added = 0
        with self._tx() as conn:
            for e in new:
                row = dict(
                    event_id=e.event_id, user_id=e.user_id, product_id=e.product_id, type=e.type, channel=e.channel
                )
                added += conn.execute(statement, {**row, "ts": e.ts}).rowcount
        return added, len(new) - added

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        """The user's events across channels, oldest first (the newest `limit` when given)."""
        query = (
            select(*EVENT_FIELDS)
            .where(db.events.c.user_id == user_id)
            .order_by(db.events.c.ts.desc(), db.events.c.seq.desc())
            .limit(limit)
        )
        return [Event(*r) for r in reversed(self._query(query))]

    def events(self) -> list[Event]:
        """Every event, each user's in time order."""
        query = select(*EVENT_FIELDS).order_by(db.events.c.user_id, db.events.c.ts, db.events.c.seq)
        return [Event(*r) for r in self._query(query)]

    def popular_products(self, limit: int) -> list[tuple[str, int]]:
        n = func.count().label("n")
        query = (
            select(db.events.c.product_id, n)
            .join(db.products, db.events.c.product_id == db.products.c.product_id)
            .group_by(db.events.c.product_id)
            .order_by(n.desc(), db.events.c.product_id)
            .limit(limit)
        )
        return [tuple(r) for r in self._query(query)]
