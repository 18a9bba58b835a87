"""The catalogue's change log (part of SqlCatalogStore): what each write transaction changed, in commit order.

Every replica follows the log (api/catalog/follow.py) to keep its vector index and read caches in step with
the writes of the others. Sequence numbers are in commit order: SQLite has one writer at a time, and
PostgreSQL writers append under one transaction-scoped advisory lock, taken as the last step before commit,
so a reader that has seen `seq` N has seen every change before it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, insert, select

from api.db import tables as db

CHANGE_LOG_LOCK = 0x5EE5C1  # the advisory lock PostgreSQL writers append to the log under
IMAGE_ADDED, IMAGE_REMOVED, PRODUCT_CHANGED = "image_added", "image_removed", "product"


@dataclass(frozen=True)
class Change:
    seq: int
    origin: str
    kind: str
    product_id: str
    image_id: int | None
    at: float  # when it was committed (the writer's clock)


class SqlChangeLog:
    """The change-log half of `CatalogStore`; the store provides `_query`, `_tx` (which calls
    `_append_changes` before it commits) and `origin`, this process's name in the log."""

    origin: str
    engine: Engine
    _lock: threading.RLock
    _pending: list[tuple[str, str, int | None]]

    def _log(self, kind: str, product_id: str, image_id: int | None = None) -> None:
        """Record a change of the current write transaction."""
        self._pending.append((kind, product_id, image_id))

    def _append_changes(self, conn: Connection) -> None:
        if not self._pending:
            return
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({CHANGE_LOG_LOCK})")
        now = time.time()
        rows = [
            {"origin": self.origin, "kind": kind, "product_id": pid, "image_id": image_id, "at": now}
            for kind, pid, image_id in self._pending
        ]
        conn.execute(insert(db.catalog_changes), rows)

    def change_head(self) -> int:
        """The newest change's sequence number (0: none yet)."""
        return self._query(select(func.coalesce(func.max(db.catalog_changes.c.seq), 0)))[0][0]

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        log = db.catalog_changes.c
        query = (
            select(log.seq, log.origin, log.kind, log.product_id, log.image_id, log.at)
            .where(log.seq > seq)
            .order_by(log.seq)
            .limit(limit)
        )
        return [Change(*row) for row in self._query(query, {})]

    def prune_changes(self, older_than_s: float) -> int:
        """Forget changes older than `older_than_s` seconds; how many went."""
        cutoff = time.time() - older_than_s
        with self._lock, self.engine.begin() as conn:
            return conn.execute(delete(db.catalog_changes).where(db.catalog_changes.c.at < cutoff)).rowcount
