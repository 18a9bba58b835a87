"""What the catalogue holds, as every layer above the store sees it, and the errors of its writes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vision.preprocess import ImageError


@dataclass
class Product:
    product_id: str
    name: str
    fine_category: str
    coarse_category: str
    description: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass
class ImageRecord:
    image_id: int
    product_id: str
    sha256: str
    content_type: str
    width: int
    height: int
    bytes: int
    created_at: float


@dataclass
class NewImage:
    """A decoded, embedded photo ready to be stored."""

    sha256: str
    content_type: str
    width: int
    height: int
    bytes: int
    embedding: np.ndarray
    data: bytes | None = None  # the photo's bytes, when the database is the photo store


@dataclass
class IndexEntries:
    """Photos as the vector index takes them: ids and vectors, and each photo's product and categories for
    an index that filters by category itself (Milvus)."""

    ids: np.ndarray
    vectors: np.ndarray
    product_ids: list[str] = field(default_factory=list)
    fine: list[str] = field(default_factory=list)
    coarse: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


class IndexUnavailable(RuntimeError):
    """The vector index (a Milvus server) cannot be reached; nothing was changed by the request that met it
    unless the message says so."""


class NotFound(KeyError):
    pass


class AlreadyExists(ValueError):
    pass


class PhotoError(ValueError):
    """A photo in a multi-photo request was refused; says which one."""

    def __init__(self, position: int, name: str, error: ImageError):
        super().__init__(f"photo {position} ({name}): {error}")
        self.position, self.name, self.error = position, name, error


class UnknownCategory(ValueError):
    pass


class UnknownProducts(ValueError):
    """Events name products the catalogue does not have; nothing was stored."""

    def __init__(self, missing: list[tuple[int, str]]):
        position, product_id = missing[0]
        super().__init__(f"event {position}: unknown product {product_id!r} (nothing was stored)")
        self.missing = missing
