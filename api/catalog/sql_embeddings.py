"""Photo embeddings in the catalogue's database (part of SqlCatalogStore): what the vector index is built from.

`images.embedding` is the vector of the model that wrote the photo (`images.model_id`); the vectors of other
model versions are in `image_embeddings`. Every read names the model it wants, so a replica serving one
version never indexes another version's vector, whichever replica wrote the photo: during a switch or a
rolling upgrade each version finds its own vectors, or learns which photos it must embed itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sqlalchemy import and_, case, select

from api.catalog.records import ImageRecord, IndexEntries
from api.db import tables as db
from api.db.engine import dialect_insert

SQL_VARIABLES = 900  # host parameters per statement, under SQLite's oldest default limit (999)


class SqlEmbeddings:
    """The embedding half of `CatalogStore`; the store provides `_tx` and `_query`."""

    def iter_entries(self, model_id: str, batch: int = 4096) -> Iterator[IndexEntries]:
        """Every photo with a vector of `model_id`, as the index takes it, in batches (rebuilding the index)."""
        last = -1
        while True:
            entries = self._entries(model_id, db.images.c.image_id > last, batch)
            if not len(entries):
                return
            yield entries
            last = int(entries.ids[-1])

    def entries_of(self, image_ids: Sequence[int], model_id: str) -> IndexEntries:
        """The photos among `image_ids` that still exist and have a vector of `model_id`."""
        ids = [int(i) for i in image_ids]
        parts = [
            self._entries(model_id, db.images.c.image_id.in_(ids[s : s + SQL_VARIABLES]))
            for s in range(0, len(ids), SQL_VARIABLES)
        ]
        return _concat(parts)

    def _entries(self, model_id: str, where, limit: int | None = None) -> IndexEntries:
        p, im, other = db.products.c, db.images.c, db.image_embeddings.c
        vector = case((im.model_id == model_id, im.embedding), else_=other.embedding)
        query = (
            select(im.image_id, vector, im.product_id, p.fine_category, p.coarse_category)
            .join(db.products, im.product_id == p.product_id)
            .outerjoin(db.image_embeddings, and_(other.image_id == im.image_id, other.model_id == model_id))
            .where(where, (im.model_id == model_id) | other.embedding.is_not(None))
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

    def stale_images(self, model_id: str, image_ids: Sequence[int] | None = None) -> list[ImageRecord]:
        """Photos (of `image_ids`, or all) without a vector of `model_id`: what that model must embed."""
        from api.catalog.sql import IMAGE_FIELDS

        im, other = db.images.c, db.image_embeddings.c
        has_vector = select(other.image_id).where(other.image_id == im.image_id, other.model_id == model_id)
        where = (im.model_id != model_id) & ~has_vector.exists()
        if image_ids is None:
            return [ImageRecord(*r) for r in self._query(select(*IMAGE_FIELDS).where(where).order_by(im.image_id))]
        ids, out = [int(i) for i in image_ids], []
        for s in range(0, len(ids), SQL_VARIABLES):
            chunk = where & im.image_id.in_(ids[s : s + SQL_VARIABLES])
            out += [ImageRecord(*r) for r in self._query(select(*IMAGE_FIELDS).where(chunk).order_by(im.image_id))]
        return out

    def set_embeddings(self, image_ids: Sequence[int], embeddings: np.ndarray, model_id: str) -> None:
        """Store `model_id`'s vectors of these photos beside the writer's own (a photo deleted meanwhile is
        skipped; one stored already is kept: the same model gives the same vector)."""
        insert = dialect_insert(self.engine)
        rows = [
            {"image_id": int(i), "model_id": model_id, "embedding": vector_bytes(e)}
            for i, e in zip(image_ids, embeddings)
        ]
        with self.engine.begin() as conn:  # not the change log: no photo changes, only its vectors
            present = set()
            for s in range(0, len(rows), SQL_VARIABLES):
                ids = [r["image_id"] for r in rows[s : s + SQL_VARIABLES]]
                # FOR KEY SHARE on PostgreSQL: a photo deleted meanwhile waits for this transaction.
                query = select(db.images.c.image_id).where(db.images.c.image_id.in_(ids))
                present.update(conn.execute(query.with_for_update(read=True, key_share=True)).scalars())
            rows = [r for r in rows if r["image_id"] in present]
            if rows:
                conn.execute(insert(db.image_embeddings).on_conflict_do_nothing(), rows)


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
