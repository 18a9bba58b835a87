"""The catalogue store: the one source of truth for products, photos, their embeddings and shopper events.

`CatalogStore` is the contract every layer above uses; `SqlCatalogStore` (api/catalog/sql.py, SQLite or
PostgreSQL) implements it, made by `Settings.create_store()`. Every write is one transaction, so a crash
never leaves half a product behind, and appends what it changed to the change log that every replica
follows (api/catalog/follow.py); reads may be cached until the next change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from api.catalog.records import AlreadyExists, ImageRecord, IndexEntries, NewImage, NotFound, Product
from api.catalog.sql_changes import Change
from vision.recommender import Event

__all__ = ["AlreadyExists", "CatalogStore", "Event", "ImageRecord", "NewImage", "NotFound", "Product"]


class CatalogStore(Protocol):
    origin: str  # this process's name in the change log
    shared: bool  # other processes (replicas) write to it: searches catch up with the log first

    def close(self) -> None: ...

    def forget(self) -> None:
        """Drop the read caches (another replica changed the catalogue)."""

    # -- products -----------------------------------------------------------------------------
    def get_product(self, product_id: str) -> Product:
        """The product, or NotFound."""

    def get_products(self, product_ids: Sequence[str]) -> dict[str, Product]:
        """The products that exist among `product_ids` (shared objects: do not modify them)."""

    def list_products(
        self, category: str | None = None, after: str | None = None, limit: int = 50, text: str | None = None
    ) -> list[Product]:
        """Products in id order after `after`, optionally of one fine or coarse category, optionally those
        whose id or name contains `text` (case-insensitive)."""

    def all_products(self) -> list[Product]: ...

    def count_products(self) -> int: ...

    def upsert_product(
        self, product: Product, images: Sequence[NewImage] = (), model_id: str = "", create_only: bool = False
    ) -> tuple[Product, list[tuple[int, int]]]:
        """Create or replace a product and add photos it does not have yet, in one transaction; (image id,
        position in `images`) of each photo added. AlreadyExists when `create_only` and it exists."""

    def update_product(self, product_id: str, changes: dict) -> Product:
        """Change some of a product's fields (name, categories, description, attributes)."""

    def delete_product(self, product_id: str) -> list[ImageRecord]:
        """Delete a product and its photos; returns the photos removed."""

    # -- photos -------------------------------------------------------------------------------
    def add_images(self, product_id: str, images: Sequence[NewImage], model_id: str) -> list[tuple[int, int]]: ...

    def images_of(self, product_ids: Sequence[str]) -> dict[str, list[ImageRecord]]: ...

    def get_image(self, product_id: str, image_id: int) -> ImageRecord: ...

    def delete_image(self, product_id: str, image_id: int) -> ImageRecord: ...

    def sha_in_use(self, sha256: str) -> bool:
        """Some product still has a photo with these bytes (its file must stay)."""

    def image_ids(self, category: str | None = None) -> np.ndarray:
        """Ids of every photo, or of the photos of products in one fine or coarse category."""

    def owner_codes(self, image_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """For each photo id a product code (-1: the photo is gone) and the product id of each code."""

    # -- embeddings ---------------------------------------------------------------------------
    def iter_entries(self, model_id: str, batch: int = 4096) -> Iterator[IndexEntries]:
        """Every photo with a vector of `model_id`, as the index takes it, in batches (rebuilding the index)."""

    def entries_of(self, image_ids: Sequence[int], model_id: str) -> IndexEntries:
        """The photos among `image_ids` that still exist and have a vector of `model_id`."""

    def stale_images(self, model_id: str, image_ids: Sequence[int] | None = None) -> list[ImageRecord]:
        """Photos (of `image_ids`, or all) without a vector of `model_id`: what that model must embed."""

    def set_embeddings(self, image_ids: Sequence[int], embeddings: np.ndarray, model_id: str) -> None:
        """Store `model_id`'s vectors of these photos beside the writer's own."""

    # -- the change log -----------------------------------------------------------------------
    def change_head(self) -> int:
        """The newest change's sequence number (0: none)."""

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """The changes after `seq`, in commit order."""

    def prune_changes(self, older_than_s: float) -> int: ...

    # -- categories ---------------------------------------------------------------------------
    def categories(self) -> list[tuple[str, str, int]]:
        """(fine, coarse, product count) of every fine category in the catalogue."""

    def has_category(self, name: str) -> bool: ...

    # -- shopper events -----------------------------------------------------------------------
    def missing_products(self, product_ids: Sequence[str]) -> set[str]: ...

    def add_events(self, events: Sequence[Event]) -> tuple[int, int]:
        """Store events in one transaction, ignoring event ids seen before: (added, duplicates)."""

    def history(self, user_id: str, limit: int | None = None) -> list[Event]:
        """The user's events on every channel, oldest first (the newest `limit`)."""

    def events(self) -> list[Event]:
        """Every event, each user's in time order."""

    def popular_products(self, limit: int) -> list[tuple[str, int]]:
        """(product id, event count) of the products with the most events."""
