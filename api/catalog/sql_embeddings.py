"""Photo embeddings in the catalogue's database (part of SqlCatalogStore): what the vector index is built from."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import bindparam, select, update

from api.catalog.records import IndexEntries
from api.db import tables as db

SQL_VARIABLES = 900  # host parameters per statement, under SQLite's oldest default limit (999)


class SqlEmbeddings:
    """The embedding half of `CatalogStore`; the store provides `_tx` and `_query`."""

    def iter_entries(self, batch: int = 4096) -> Iterator[IndexEntries]:
        """Every photo as the index takes it, in batches, for rebuilding the index."""
        last = -1
        while True:
            entries = self._entries(db.images.c.image_id > last, batch)
            if not len(entries):
                return
            yield entries
            last = int(entries.ids[-1])

    def entries_of(self, image_ids: Sequence[int]) -> IndexEntries:
        """The photos among `image_ids` that still exist, as the index takes them."""
        ids = [int(i) for i in image_ids]
        parts = [
            self._entries(db.images.c.image_id.in_(ids[s : s + SQL_VARIABLES]))
            for s in range(0, len(ids), SQL_VARIABLES)
        ]
        return _concat(parts)

    def _entries(self, where, limit: int | None = None) -> IndexEntries:
        p, im = db.products.c, db.images.c
        query = (
            select(im.image_id, im.embedding, im.product_id, p.fine_category, p.coarse_category)
            .join(db.products, im.product_id == p.product_id)
            .where(where)
            .order_by(im.image_id)
            .limit(limit)
        )
        rows = self._query(query)
        if not rows:
            return _concat([])
        return IndexEntries(
            ids=np.array([r[0] for r in rows], dtype=np.int64),
            vectors=np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]),
            product_ids=[r[2] for r in rows],
            fine=[r[3] for r in rows],
            coarse=[r[4] for r in rows],
        )

    def set_embeddings(self, image_ids: Sequence[int], embeddings: np.ndarray, model_id: str) -> None:
        statement = (
            update(db.images)
            .where(db.images.c.image_id == bindparam("id"))
            .values(embedding=bindparam("vector"), model_id=model_id)
        )
        with self._tx() as conn:
            conn.execute(statement, [{"id": int(i), "vector": vector_bytes(e)} for i, e in zip(image_ids, embeddings)])


def _concat(parts: list[IndexEntries]) -> IndexEntries:
    parts = [p for p in parts if len(p)]
    if not parts:
        return IndexEntries(np.empty(0, np.int64), np.empty((0, 0), np.float32))
    return IndexEntries(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.vectors for p in parts]),
        [x for p in parts for x in p.product_ids],
        [x for p in parts for x in p.fine],
        [x for p in parts for x in p.coarse],
    )


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()
