"""The photo store: the original bytes of every catalogue photo (kept for re-embedding and for serving
them), and the thumbnail cache beside it. `Settings.create_photo_store()` picks one (`SEESKU_PHOTO_STORE`):

- `PhotoFiles`: content-addressed files in a folder: the data dir's `images/` (the embedded default), or a
  folder every replica mounts (NFS, a ReadWriteMany volume). Written before the transaction that names
  them, removed after the last photo with those bytes is gone. Limit on a shared folder: a photo deleted
  through one replica while the same bytes are being added to another product through another can lose
  its file (the check and the unlink are not one step); the photo stays searchable, its bytes 404.
- `DatabasePhotos`: the bytes in the database (`photo_data`, bytea on PostgreSQL), written in the same
  transaction as the photo's row and gone with it: nothing to mount and nothing to race, at the cost of
  database size (one copy per product photo, not per distinct bytes) and of serving photos from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine, select

from api.db import tables as db
from api.db.engine import reading
from vision.files import atomic_write
from vision.preprocess import Limits, thumbnail


class PhotoStore(Protocol):
    in_database: bool  # the store's write transaction carries the bytes (NewImage.data)

    def write(self, sha256: str, data: bytes) -> None: ...

    def read(self, sha256: str) -> bytes:
        """The bytes; FileNotFoundError when they are gone."""

    def remove(self, sha256: str) -> None:
        """No photo uses these bytes any more."""


class PhotoFiles:
    """Original photo bytes, content-addressed under `root` (data_dir/images): one file per distinct photo,
    however many products use it."""

    in_database = False

    def __init__(self, root: Path):
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def write(self, sha256: str, data: bytes) -> None:
        path = self.path(sha256)
        if not path.exists():
            atomic_write(path, data)

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


class DatabasePhotos:
    """Photo bytes in the database's `photo_data` table, written by the store with the photo's row."""

    in_database = True

    def __init__(self, engine: Engine):
        self.engine = engine

    def write(self, sha256: str, data: bytes) -> None:
        """Nothing here: the store writes them in the photo's own transaction."""

    def read(self, sha256: str) -> bytes:
        query = (
            select(db.photo_data.c.data)
            .join(db.images, db.images.c.image_id == db.photo_data.c.image_id)
            .where(db.images.c.sha256 == sha256)
            .limit(1)
        )
        with reading(self.engine) as conn:
            row = conn.execute(query).first()
        if row is None:
            raise FileNotFoundError(sha256)
        return bytes(row[0])

    def remove(self, sha256: str) -> None:
        """Nothing here: the bytes went with the photo's row (ON DELETE CASCADE)."""


class Thumbnails:
    """Small upright JPEGs of stored photos, made once per photo and size (data_dir/thumbs: a cache each
    replica keeps for itself)."""

    def __init__(self, root: Path, files: PhotoStore, limits: Limits):
        self.root, self.files, self.limits = root, files, limits

    def get(self, sha256: str, size: int = 256) -> bytes:
        cache = self.root / f"{sha256}-{size}.jpg"
        if cache.exists():
            return cache.read_bytes()
        data = thumbnail(self.files.read(sha256), size, self.limits)
        atomic_write(cache, data)
        return data
