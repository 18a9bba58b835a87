"""The catalogue store on SQLAlchemy Core: products, their photos and the photos' embeddings, shopper events.

One implementation for both databases: SQLite (WAL, one file under the data dir: the embedded default) and
PostgreSQL (every replica on one database). The database is the source of truth; the vector index is a
derived, rebuildable view of `images.embedding` (see api.catalog.service), so every catalogue change is one
transaction and a crash can never leave half a product behind. The tables are in api/db/tables.py.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from sqlalchemy import Connection, Engine, delete, func, or_, select, update

from api.catalog.records import AlreadyExists, ImageRecord, NewImage, NotFound, Product
from api.catalog.sql_changes import IMAGE_ADDED, IMAGE_REMOVED, PRODUCT_CHANGED, SqlChangeLog
from api.catalog.sql_embeddings import SQL_VARIABLES, SqlEmbeddings, vector_bytes
from api.catalog.sql_events import SqlEvents
from api.db import tables as db
from api.db.engine import dialect_insert, reading

PRODUCT_FIELDS = ("name", "fine_category", "coarse_category", "description", "attributes")
IMAGE_FIELDS = (
    db.images.c.image_id,
    db.images.c.product_id,
    db.images.c.sha256,
    db.images.c.content_type,
    db.images.c.width,
    db.images.c.height,
    db.images.c.bytes,
    db.images.c.created_at,
)

CACHE_LIMIT = 200_000  # entries per read cache; past it the cache starts again (a bound, not an LRU)
UNKNOWN, GONE = -2, -1  # photo-owner codes that are not products


class SqlCatalogStore(SqlEvents, SqlChangeLog, SqlEmbeddings):
    """`CatalogStore` in a SQL database reached through one SQLAlchemy engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = dialect_insert(engine)
        self.origin = uuid.uuid4().hex  # this process in the change log
        # Other processes write to it: every replica of a PostgreSQL database. The embedded SQLite file has
        # one server; a command writing beside it (`seesku catalog import`) is followed by the poll alone.
        self.shared = engine.dialect.name != "sqlite"
        self._pending = []
        # Every read and write of this process is serialised: SQLite allows one writer anyway, the catalogue's
        # reads are point lookups, and the read caches below must never be filled from before the last commit.
        self._lock = threading.RLock()
        # Read by every search and cleared by every write transaction: photo ids per category (for the
        # category heads), the owner of each photo and the products, so ranking the visual short-list costs
        # no SQL or JSON.
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
            self.engine.dispose()

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One write transaction (on SQLite BEGIN IMMEDIATE: it waits for the write lock) that appends what it
        changed to the change log as it commits; clears the caches."""
        with self._lock:
            self._pending = []
            try:
                with self.engine.begin() as conn:
                    yield conn
                    self._append_changes(conn)
            finally:
                self._pending = []
                self._clear_caches()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reads, each statement on its own (no transaction held open)."""
        with self._lock, reading(self.engine) as conn:
            yield conn

    def _query(self, statement, params: dict | None = None) -> list:
        with self._read() as conn:
            return conn.execute(statement, params or {}).all()

    def forget(self) -> None:
        """Drop the read caches: another replica changed the catalogue (api/catalog/follow.py)."""
        with self._lock:
            self._clear_caches()

    def _clear_caches(self) -> None:
        self._category_images.clear()
        self._products.clear()
        # new objects, not cleared ones: a search holding the previous generation's codes keeps its names
        self._owner_codes = np.full(0, UNKNOWN, np.int32)
        self._code_products = []
        self._product_codes = {}

    # -- products -----------------------------------------------------------------------------
    @staticmethod
    def _product(row) -> Product:
        pid, name, fine, coarse, desc, attrs, created, updated = row
        return Product(pid, name, fine, coarse, desc, json.loads(attrs), created, updated)

    def get_product(self, product_id: str) -> Product:
        rows = self._query(select(db.products).where(db.products.c.product_id == product_id))
        if not rows:
            raise NotFound(product_id)
        return self._product(rows[0])

    def get_products(self, product_ids: Sequence[str]) -> dict[str, Product]:
        """The products that exist among `product_ids` (cached until the next write; do not modify them)."""
        with self._lock:
            found = {pid: self._products[pid] for pid in product_ids if pid in self._products}
            missing = [pid for pid in product_ids if pid not in found]
            for start in range(0, len(missing), SQL_VARIABLES):
                chunk = missing[start : start + SQL_VARIABLES]
                for row in self._query(select(db.products).where(db.products.c.product_id.in_(chunk))):
                    found[row[0]] = self._products[row[0]] = self._product(row)
            if len(self._products) > CACHE_LIMIT:
                self._products.clear()
            return found

    def list_products(
        self, category: str | None = None, after: str | None = None, limit: int = 50, text: str | None = None
    ) -> list[Product]:
        query = select(db.products)
        if category is not None:
            query = query.where(_in_category(category))
        if text:
            # Escaped, so a merchandiser's "50%" or "a_b" is searched as typed; lower() on both sides is
            # case-insensitive alike on SQLite and PostgreSQL.
            pattern = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(
                or_(
                    func.lower(db.products.c.product_id).like(pattern, escape="\\"),
                    func.lower(db.products.c.name).like(pattern, escape="\\"),
                )
            )
        if after is not None:
            query = query.where(db.products.c.product_id > after)
        return [self._product(r) for r in self._query(query.order_by(db.products.c.product_id).limit(limit))]

    def all_products(self) -> list[Product]:
        return [self._product(r) for r in self._query(select(db.products).order_by(db.products.c.product_id))]

    def count_products(self) -> int:
        return self._query(select(func.count()).select_from(db.products))[0][0]

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
                select(db.products.c.created_at).where(db.products.c.product_id == product.product_id)
            ).first()
            if existing and create_only:
                raise AlreadyExists(product.product_id)
            values = {
                "product_id": product.product_id,
                "name": product.name,
                "fine_category": product.fine_category,
                "coarse_category": product.coarse_category,
                "description": product.description,
                "attributes": json.dumps(product.attributes),
                "created_at": existing[0] if existing else now,
                "updated_at": now,
            }
            statement = self._insert(db.products).values(values)
            changed = {k: statement.excluded[k] for k in (*PRODUCT_FIELDS, "updated_at")}
            conn.execute(statement.on_conflict_do_update(index_elements=["product_id"], set_=changed))
            self._log(PRODUCT_CHANGED, product.product_id)
            ids = self._insert_images(conn, product.product_id, images, model_id, now)
        return self.get_product(product.product_id), ids

    def update_product(self, product_id: str, changes: dict) -> Product:
        changes = {k: v for k, v in changes.items() if k in PRODUCT_FIELDS}
        if "attributes" in changes:
            changes["attributes"] = json.dumps(changes["attributes"])
        with self._tx() as conn:
            _require_product(conn, product_id)
            if changes:
                conn.execute(
                    update(db.products)
                    .where(db.products.c.product_id == product_id)
                    .values(**changes, updated_at=time.time())
                )
                self._log(PRODUCT_CHANGED, product_id)
        return self.get_product(product_id)

    def delete_product(self, product_id: str) -> list[ImageRecord]:
        """Delete a product and its photos; returns the removed photos (their vectors and files go too)."""
        with self._tx() as conn:
            removed = _images(conn, db.images.c.product_id == product_id)
            if conn.execute(delete(db.products).where(db.products.c.product_id == product_id)).rowcount == 0:
                raise NotFound(product_id)
            self._log(PRODUCT_CHANGED, product_id)
            for im in removed:
                self._log(IMAGE_REMOVED, product_id, im.image_id)
        return removed

    # -- images -------------------------------------------------------------------------------
    def _insert_images(
        self, conn: Connection, product_id: str, new: Sequence[NewImage], model_id: str, now: float
    ) -> list[tuple[int, int]]:
        statement = (
            self._insert(db.images)
            .on_conflict_do_nothing(index_elements=["product_id", "sha256"])
            .returning(db.images.c.image_id)
        )
        added = []
        for position, im in enumerate(new):
            row = conn.execute(
                statement,
                {
                    "product_id": product_id,
                    "sha256": im.sha256,
                    "content_type": im.content_type,
                    "width": im.width,
                    "height": im.height,
                    "bytes": im.bytes,
                    "embedding": vector_bytes(im.embedding),
                    "model_id": model_id,
                    "created_at": now,
                },
            ).first()
            if row is not None:
                added.append((row[0], position))
                self._log(IMAGE_ADDED, product_id, row[0])
                if im.data is not None:
                    conn.execute(self._insert(db.photo_data).values(image_id=row[0], data=im.data))
        return added

    def add_images(self, product_id: str, images: Sequence[NewImage], model_id: str) -> list[tuple[int, int]]:
        with self._tx() as conn:
            _require_product(conn, product_id)
            ids = self._insert_images(conn, product_id, images, model_id, time.time())
            conn.execute(
                update(db.products).where(db.products.c.product_id == product_id).values(updated_at=time.time())
            )
        return ids

    def images_of(self, product_ids: Sequence[str]) -> dict[str, list[ImageRecord]]:
        out: dict[str, list[ImageRecord]] = {pid: [] for pid in product_ids}
        ids = list(product_ids)
        with self._read() as conn:
            for start in range(0, len(ids), SQL_VARIABLES):
                for im in _images(conn, db.images.c.product_id.in_(ids[start : start + SQL_VARIABLES])):
                    out[im.product_id].append(im)
        return out

    def get_image(self, product_id: str, image_id: int) -> ImageRecord:
        with self._read() as conn:
            found = _images(conn, (db.images.c.product_id == product_id) & (db.images.c.image_id == image_id))
        if not found:
            raise NotFound(f"{product_id}/{image_id}")
        return found[0]

    def delete_image(self, product_id: str, image_id: int) -> ImageRecord:
        with self._tx() as conn:
            found = _images(conn, (db.images.c.product_id == product_id) & (db.images.c.image_id == image_id))
            if not found:
                raise NotFound(f"{product_id}/{image_id}")
            conn.execute(delete(db.images).where(db.images.c.image_id == image_id))
            self._log(IMAGE_REMOVED, product_id, image_id)
        return found[0]

    def sha_in_use(self, sha256: str) -> bool:
        return bool(self._query(select(db.images.c.image_id).where(db.images.c.sha256 == sha256).limit(1)))

    def image_ids(self, category: str | None = None) -> np.ndarray:
        """Ids of every stored photo, or of the photos of products in one fine or coarse category."""
        if category is None:
            return _id_array(self._query(select(db.images.c.image_id)))
        with self._lock:
            cached = self._category_images.get(category)
            if cached is None:
                cached = _id_array(
                    self._query(
                        select(db.images.c.image_id)
                        .join(db.products, db.images.c.product_id == db.products.c.product_id)
                        .where(_in_category(category))
                    )
                )
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
                    owners = select(db.images.c.image_id, db.images.c.product_id).where(db.images.c.image_id.in_(chunk))
                    for image_id, product_id in self._query(owners):
                        code = self._product_codes.get(product_id)
                        if code is None:
                            code = self._product_codes[product_id] = len(names)
                            names.append(product_id)
                        table[image_id] = code
                codes = table[image_ids]
            return codes, names

    # -- embeddings (the rest is in api/catalog/sql_embeddings.py) --------------------------------
    # -- categories ---------------------------------------------------------------------------
    def categories(self) -> list[tuple[str, str, int]]:
        """(fine, coarse, product count) for every fine category in the catalogue."""
        fine, coarse = db.products.c.fine_category, db.products.c.coarse_category
        query = select(fine, coarse, func.count()).group_by(fine, coarse).order_by(coarse, fine)
        return [tuple(r) for r in self._query(query)]

    def has_category(self, name: str) -> bool:
        return bool(self._query(select(db.products.c.product_id).where(_in_category(name)).limit(1)))

    def missing_products(self, product_ids: Sequence[str]) -> set[str]:
        wanted = set(product_ids)
        return wanted - set(self.get_products(sorted(wanted)))


def _in_category(name: str):
    return or_(db.products.c.fine_category == name, db.products.c.coarse_category == name)


def _require_product(conn: Connection, product_id: str) -> None:
    if conn.execute(select(db.products.c.product_id).where(db.products.c.product_id == product_id)).first() is None:
        raise NotFound(product_id)


def _images(conn: Connection, where) -> list[ImageRecord]:
    return [ImageRecord(*r) for r in conn.execute(select(*IMAGE_FIELDS).where(where).order_by(db.images.c.image_id))]


def _id_array(rows: list) -> np.ndarray:
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
