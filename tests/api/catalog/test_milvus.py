"""The catalogue service on Milvus (a real server) and PostgreSQL: the category filter runs inside Milvus,
changes are visible to the next search, a category change relabels the photos, and a Milvus that cannot
be reached is reported as such with nothing half-written."""

import numpy as np
import pytest

from api.catalog.milvus import MilvusIndex
from api.catalog.records import IndexUnavailable
from api.catalog.service import CatalogService
from tests.api.catalog.conftest import photo, product
from tests.conftest import MilvusServer, fresh_postgres_database, make_settings, milvus_collection


def milvus_service(tmp_path, postgres_server, milvus_url) -> CatalogService:
    settings = make_settings(
        tmp_path,
        load_samples=False,
        database_url=fresh_postgres_database(postgres_server),
        index=milvus_url,
        milvus_collection=milvus_collection(),
    )
    service = CatalogService(settings)
    service.open()
    return service


@pytest.fixture
def service(tmp_path, postgres_server, milvus_server):
    svc = milvus_service(tmp_path, postgres_server, milvus_server.url)
    yield svc
    svc.close()


def embedding(service, i):
    return service.prepare([photo(i)])[0][0].embedding


def test_writes_are_searchable_at_once_and_categories_filter_inside_milvus(service):
    assert isinstance(service.index, MilvusIndex)
    service.put_product(product("a", fine="Oat", coarse="Milk"), [photo(0)])
    service.put_product(product("b", fine="Rye", coarse="Bread"), [photo(1), photo(2)])
    assert len(service.index) == 3
    assert [m.product.product_id for m in service.ranking.nearest_products(embedding(service, 1), 5)] == ["b", "a"]
    in_milk = service.ranking.nearest_products(embedding(service, 1), 5, category="Milk")
    assert [m.product.product_id for m in in_milk] == ["a"]
    assert service.ranking.nearest_products(embedding(service, 1), 5, category="Milk", within="Rye") == []

    service.update_product("a", {"fine_category": "Rye", "coarse_category": "Bread"})  # relabelled in Milvus
    in_bread = service.ranking.nearest_products(embedding(service, 0), 5, category="Bread")
    assert [m.product.product_id for m in in_bread] == ["a", "b"]

    service.delete_product("b")
    assert len(service.index) == 1
    assert [m.product.product_id for m in service.ranking.nearest_products(embedding(service, 1), 5)] == ["a"]


def test_a_second_replica_shares_the_collection(service, tmp_path):
    service.put_product(product("a"), [photo(0)])
    settings = service.settings.model_copy(update={"data_dir": tmp_path / "b"})
    other = CatalogService(settings)
    other.open()
    try:
        assert other.index.collection == service.index.collection
        assert len(other.index) == 1  # nothing rebuilt: the collection agrees with the store
        other.put_product(product("c"), [photo(3)])
        result = service.search(photo(3).data, k=1)  # through the first replica, at once
        assert result.matches[0].product.product_id == "c"
    finally:
        other.close()


def test_a_change_committed_while_the_index_went_away_is_indexed_once_it_is_back(tmp_path, postgres_server):
    """The index can go between a write's check and its catch-up: the change is committed, the next
    catch-up (every search starts with one) indexes it."""
    server = MilvusServer()
    server.start()
    service = milvus_service(tmp_path, postgres_server, server.url)
    try:
        server.stop()
        service.index.check = lambda: None  # as if it went away just after the check
        service.put_product(product("a"), [photo(0)])
        assert service.store.missing_products(["a"]) == set()
        server.start()
        assert service.search(photo(0).data, k=1).matches[0].product.product_id == "a"
    finally:
        service.close()
        server.close()


def test_milvus_down_means_503_then_recovery(tmp_path, postgres_server):
    server = MilvusServer()
    server.start()
    service = milvus_service(tmp_path, postgres_server, server.url)
    try:
        service.put_product(product("a"), [photo(0)])
        server.stop()
        with pytest.raises(IndexUnavailable):
            service.search(photo(0).data, k=1)
        with pytest.raises(IndexUnavailable):  # refused before anything was written
            service.put_product(product("b"), [photo(1)])
        assert service.store.missing_products(["b"]) == {"b"}
        server.start()
        service.put_product(product("b"), [photo(1)])
        result = service.search(photo(1).data, k=1)
        assert result.matches[0].product.product_id == "b"
        assert np.array_equal(np.sort(service.index.ids()), np.sort(service.store.image_ids()))
    finally:
        service.close()
        server.close()
