"""The catalogue store in SQLite (WAL): products, their photos and the photos' embeddings, shopper events.

SQLite is the source of truth. The vector index is a derived, rebuildable view of the `images.embedding`
column (see api.catalog.service), so every catalogue change is one SQLite transaction and a crash can
never leave half a product behind.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from api.catalog.records import AlreadyExists, ImageRecord, NewImage, NotFound, Product
from vision.recommender import Event

SCHEMA = (Path(__file__).with_name("schema.sql")).read_text()

PRODUCT_FIELDS = ("name", "fine_category", "coarse_category", "description", "attributes")


CACHE_LIMIT = 200_000  # entries per read cache; past it the cache starts again (a bound, not an LRU)
UNKNOWN, GONE = -2, -1  # photo-owner codes that are not products
SQL_VARIABLES = 900  # host parameters per statement, under SQLite's oldest default limit (999)


class SqliteCatalogStore:
    """`CatalogStore` in one SQLite file (WAL, synchronous=FULL): the embedded default."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One connection shared by the worker threads, serialised by a lock: SQLite allows one writer
        # anyway, and the catalogue's reads are point lookups.
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged change survives a power cut, not only a crashed process.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(SCHEMA)
        # Read by every search and cleared by every write transaction (under the same lock, so a search never
        # sees a cache older than the last commit): photo ids per category (for the category heads), the
        # owner of each photo and the products, so ranking the visual short-list costs no SQL or JSON.
        self._category_images: dict[str, np.ndarray] = {}
        self._products: dict[str, Product] = {}
        # Photo owners as arrays, so the visual short-list (hundreds of photo ids) is grouped by product in
        # numpy: _owner_codes[image_id] is a code into _code_products, UNKNOWN until looked up, GONE when the
        # photo does not exist. 4 bytes per photo id up to the largest one searched.
        self._owner_codes = np.full(0, UNKNOWN, np.int32)
        self._code_products: list[str] = []
        self._product_codes: dict[str, int] = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def _tx(self):
        """One write transaction (BEGIN IMMEDIATE: it waits for the write lock); clears the read caches."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            finally:
                self._clear_caches()

    def _clear_caches(self) -> None:
        self._category_images.clear()
        self._products.clear()
        # new objects, not cleared ones: a search holding the previous generation's codes keeps its names
        self._owner_codes = np.full(0, UNKNOWN, np.int32)
        self._code_products = []
        self._product_codes = {}

    def _query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._conn.execute(sql, params)
            return cur.fetchall()

    # -- products -----------------------------------------------------------------------------
    @staticmethod
    def _product(row) -> Product:
        pid, name, fine, coarse, desc, attrs, created, updated = row
        return Product(pid, name, fine, coarse, desc, json.loads(attrs), created, updated)

    def get_product(self, product_id: str) -> Product:
        rows = self._query("SELECT * FROM products WHERE product_id = ?", (product_id,))
        if not rows:
            raise NotFound(product_id)
        return self._product(rows[0])

    def get_products(self, product_ids: Sequence[str]) -> dict[str, Product]:
        """The products that exist among `product_ids` (cached until the next write; do not modify them)."""
        with self._lock:
            found = {pid: self._products[pid] for pid in product_ids if pid in self._products}
            missing = [pid for pid in product_ids if pid not in found]
            if missing:
                marks = ",".join("?" * len(missing))
                for row in self._query(f"SELECT * FROM products WHERE product_id IN ({marks})", missing):
                    found[row[0]] = self._products[row[0]] = self._product(row)
                if len(self._products) > CACHE_LIMIT:
                    self._products.clear()
            return found

    def list_products(self, category: str | None = None, after: str | None = None, limit: int = 50) -> list[Product]:
        sql, params = "SELECT * FROM products WHERE 1=1", []
        if category is not None:
            sql += " AND (fine_category = ? OR coarse_category = ?)"
            params += [category, category]
        if after is not None:
            sql += " AND product_id > ?"
            params.append(after)
        sql += " ORDER BY product_id LIMIT ?"
        params.append(limit)
        return [self._product(r) for r in self._query(sql, params)]

    def count_products(self) -> int:
        return self._query("SELECT COUNT(*) FROM products")[0][0]

    def upsert_product(
        self, product: Product, images: Sequence[NewImage] = (), model_id: str = "", create_only: bool = False
    ) -> tuple[Product, list[tuple[int, int]]]:
        """Create or replace a product and add photos, in one transaction.

        Returns (image id, position in `images`) for each photo added.

        Photos the product already has (same bytes) are skipped, which makes imports idempotent.
        """
        now = time.time()
        with self._tx() as conn:
            existing = conn.execute(
                "SELECT created_at FROM products WHERE product_id = ?", (product.product_id,)
            ).fetchone()
            if existing and create_only:
                raise AlreadyExists(product.product_id)
            created = existing[0] if existing else now
            conn.execute(
                "INSERT INTO products VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(product_id) DO UPDATE SET "
                "name=excluded.name, fine_category=excluded.fine_category, coarse_category=excluded.coarse_category,"
                " description=excluded.description, attributes=excluded.attributes, updated_at=excluded.updated_at",
                (
                    product.product_id,
                    product.name,
                    product.fine_category,
                    product.coarse_category,
                    product.description,
                    json.dumps(product.attributes),
                    created,
                    now,
                ),
            )
            ids = self._insert_images(conn, product.product_id, images, model_id, now)
        return self.get_product(product.product_id), ids

    def update_product(self, product_id: str, changes: dict) -> Product:
        changes = {k: v for k, v in changes.items() if k in PRODUCT_FIELDS}
        if "attributes" in changes:
            changes["attributes"] = json.dumps(changes["attributes"])
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM products WHERE product_id = ?", (product_id,)).fetchone() is None:
                raise NotFound(product_id)
            if changes:
                sets = ", ".join(f"{k} = ?" for k in changes)
                conn.execute(
                    f"UPDATE products SET {sets}, updated_at = ? WHERE product_id = ?",
                    [*changes.values(), time.time(), product_id],
                )
        return self.get_product(product_id)

    def delete_product(self, product_id: str) -> list[ImageRecord]:
        """Delete a product and its photos; returns the removed photos (their vectors and files go too)."""
        with self._tx() as conn:
            images = self._images(conn, "WHERE product_id = ?", (product_id,))
            if conn.execute("DELETE FROM products WHERE product_id = ?", (product_id,)).rowcount == 0:
                raise NotFound(product_id)
        return images

    # -- images -------------------------------------------------------------------------------
    @staticmethod
    def _insert_images(
        conn, product_id: str, images: Sequence[NewImage], model_id: str, now: float
    ) -> list[tuple[int, int]]:
        added = []
        for position, im in enumerate(images):
            cur = conn.execute(
                "INSERT INTO images (product_id, sha256, content_type, width, height, bytes, embedding, model_id,"
                " created_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(product_id, sha256) DO NOTHING",
                (
                    product_id,
                    im.sha256,
                    im.content_type,
                    im.width,
                    im.height,
                    im.bytes,
                    np.ascontiguousarray(im.embedding, dtype=np.float32).tobytes(),
                    model_id,
                    now,
                ),
            )
            if cur.rowcount:
                added.append((cur.lastrowid, position))
        return added

    def add_images(self, product_id: str, images: Sequence[NewImage], model_id: str) -> list[tuple[int, int]]:
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM products WHERE product_id = ?", (product_id,)).fetchone() is None:
                raise NotFound(product_id)
            ids = self._insert_images(conn, product_id, images, model_id, time.time())
            conn.execute("UPDATE products SET updated_at = ? WHERE product_id = ?", (time.time(), product_id))
        return ids

    @staticmethod
    def _images(conn, where: str, params: Sequence) -> list[ImageRecord]:
        rows = conn.execute(
            "SELECT image_id, product_id, sha256, content_type, width, height, bytes, created_at FROM images "
            f"{where} ORDER BY image_id",
            params,
        ).fetchall()
        return [ImageRecord(*r) for r in rows]

    def images_of(self, product_ids: Sequence[str]) -> dict[str, list[ImageRecord]]:
        out: dict[str, list[ImageRecord]] = {pid: [] for pid in product_ids}
        if not product_ids:
            return out
        marks = ",".join("?" * len(product_ids))
        with self._lock:
            for im in self._images(self._conn, f"WHERE product_id IN ({marks})", list(product_ids)):
                out[im.product_id].append(im)
        return out

    def get_image(self, product_id: str, image_id: int) -> ImageRecord:
        with self._lock:
            found = self._images(self._conn, "WHERE product_id = ? AND image_id = ?", (product_id, image_id))
        if not found:
            raise NotFound(f"{product_id}/{image_id}")
        return found[0]

    def delete_image(self, product_id: str, image_id: int) -> ImageRecord:
        with self._tx() as conn:
            found = self._images(conn, "WHERE product_id = ? AND image_id = ?", (product_id, image_id))
            if not found:
                raise NotFound(f"{product_id}/{image_id}")
            conn.execute("DELETE FROM images WHERE image_id = ?", (image_id,))
        return found[0]

    def sha_in_use(self, sha256: str) -> bool:
        return bool(self._query("SELECT 1 FROM images WHERE sha256 = ? LIMIT 1", (sha256,)))

    def image_ids(self, category: str | None = None) -> np.ndarray:
        """Ids of every stored photo, or of the photos of products in one fine or coarse category."""
        if category is None:
            rows = self._query("SELECT image_id FROM images")
            return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        with self._lock:
            cached = self._category_images.get(category)
            if cached is None:
                rows = self._query(
                    "SELECT i.image_id FROM images i JOIN products p USING (product_id) "
                    "WHERE p.fine_category = ? OR p.coarse_category = ?",
                    (category, category),
                )
                cached = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                cached.flags.writeable = False  # shared by concurrent searches
                self._category_images[category] = cached
            return cached

    def owner_codes(self, image_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """For each photo id a product code, GONE when the photo does not exist (deleted between the index and
        this read), and the product id of each code. Cached until the next write."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        with self._lock:
            names = self._code_products
            if not len(image_ids):
                return np.empty(0, np.int32), names
            table = self._owner_codes
            top = int(image_ids.max())
            if top >= len(table):
                grown = np.full(max(top + 1, 2 * len(table)), UNKNOWN, np.int32)
                grown[: len(table)] = table
                self._owner_codes = table = grown
            codes = table[image_ids]
            missing = np.unique(image_ids[codes == UNKNOWN])
            if len(missing):
                table[missing] = GONE
                for start in range(0, len(missing), SQL_VARIABLES):
                    chunk = missing[start : start + SQL_VARIABLES].tolist()
                    marks = ",".join("?" * len(chunk))
                    for image_id, product_id in self._query(
                        f"SELECT image_id, product_id FROM images WHERE image_id IN ({marks})", chunk
                    ):
                        code = self._product_codes.get(product_id)
                        if code is None:
                            code = self._product_codes[product_id] = len(names)
                            names.append(product_id)
                        table[image_id] = code
                codes = table[image_ids]
            return codes, names

    def iter_embeddings(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in batches, for rebuilding the index."""
        last = -1
        while True:
            rows = self._query(
                "SELECT image_id, embedding FROM images WHERE image_id > ? ORDER BY image_id LIMIT ?", (last, batch)
            )
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            yield ids, vectors
            last = int(ids[-1])

    def stale_images(self, model_id: str) -> list[ImageRecord]:
        """Photos embedded by another model than the one now served."""
        with self._lock:
            return self._images(self._conn, "WHERE model_id != ?", (model_id,))

    def set_embeddings(self, image_ids: Sequence[int], embeddings: np.ndarray, model_id: str) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE images SET embedding = ?, model_id = ? WHERE image_id = ?",
                [
                    (np.ascontiguousarray(e, dtype=np.float32).tobytes(), model_id, int(i))
                    for i, e in zip(image_ids, embeddings)
                ],
            )

    # -- categories ---------------------------------------------------------------------------
    def categories(self) -> list[tuple[str, str, int]]:
        """(fine, coarse, product count) for every fine category in the catalogue."""
        return [
            tuple(r)
            for r in self._query(
                "SELECT fine_category, coarse_category, COUNT(*) FROM products "
                "GROUP BY fine_category, coarse_category ORDER BY coarse_category, fine_category"
            )
        ]

    def has_category(self, name: str) -> bool:
        return bool(
            self._query("SELECT 1 FROM products WHERE fine_category = ? OR coarse_category = ? LIMIT 1", (name, name))
        )

    # -- shopper events -----------------------------------------------------------------------
    def missing_products(self, product_ids: Sequence[str]) -> set[str]:
        wanted = set(product_ids)
        return wanted - set(self.get_products(sorted(wanted)))

    def add_events(self, events: Sequence[Event]) -> tuple[int, int]:
        """Store events in one transaction; an event_id seen before is ignored. Returns (added, duplicates)."""
        added = 0
        with self._tx() as conn:
            for e in events:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO events (event_id, user_id, product_id, type, channel, ts) VALUES (?, ?, ?, ?, ?, ?)",
                    (e.event_id, e.user_id, e.product_id, e.type, e.channel, e.ts),
                )
                added += cur.rowcount
        return added, len(events) - added

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        """The user's events across channels, oldest first (the newest `limit` when given)."""
        rows = self._query(
            "SELECT user_id, product_id, type, channel, ts, event_id FROM events WHERE user_id = ? "
            "ORDER BY ts DESC, seq DESC LIMIT ?",
            (user_id, -1 if limit is None else limit),
        )
        return [Event(*r) for r in reversed(rows)]

    def events(self) -> list[Event]:
        """Every event, each user's in time order."""
        rows = self._query(
            "SELECT user_id, product_id, type, channel, ts, event_id FROM events ORDER BY user_id, ts, seq"
        )
        return [Event(*r) for r in rows]

    def popular_products(self, limit: int) -> list[tuple[str, int]]:
        return [
            tuple(r)
            for r in self._query(
                "SELECT e.product_id, COUNT(*) AS n FROM events e JOIN products p USING (product_id) "
                "GROUP BY e.product_id ORDER BY n DESC, e.product_id LIMIT ?",
                (limit,),
            )
        ]

    def all_products(self) -> list[Product]:
        return [self._product(r) for r in self._query("SELECT * FROM products ORDER BY product_id")]
