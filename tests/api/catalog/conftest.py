"""A catalogue service on a fresh data dir, and products and photos to fill it with."""

import pytest

from api.catalog.records import Product
from api.catalog.service import CatalogService, Photo
from tests.conftest import SAMPLES, make_settings

PHOTOS = sorted((SAMPLES / "catalog").glob("*.jpg"))


def product(pid: str, fine="Fine", coarse="Coarse") -> Product:
    return Product(pid, f"Product {pid}", fine, coarse, "a test product")


def photo(i: int) -> Photo:
    return Photo(PHOTOS[i].read_bytes(), PHOTOS[i].name)


@pytest.fixture
def service(tmp_path, database_url):
    """On each database: the embedded SQLite file and PostgreSQL."""
    settings = make_settings(tmp_path, load_samples=False, index_save_interval_s=3600, database_url=database_url)
    svc = CatalogService(settings)
    svc.open()
    yield svc
    svc.follower.stop()
    svc.store.close()
