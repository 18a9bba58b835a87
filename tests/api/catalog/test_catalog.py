"""Catalogue store and vector index: persistence, atomicity and recovery."""

import numpy as np
import pytest
from sqlalchemy import text

from api.catalog.index import FaissIndex
from api.catalog.records import IndexEntries
from api.catalog.service import CatalogService, Photo, PhotoError
from tests.api.catalog.conftest import photo, product
from tests.conftest import make_settings


def reopen(service: CatalogService, **overrides) -> CatalogService:
    settings = service.settings
    svc = CatalogService(
        make_settings(settings.data_dir, load_samples=False, database_url=settings.database_url, **overrides)
    )
    svc.open()
    return svc


def test_added_product_is_found_by_its_photo(service):
    service.put_product(product("a"), [photo(0), photo(1)])
    service.put_product(product("b"), [photo(10)])
    emb = service.prepare([photo(10)])[0][0].embedding
    matches = service.ranking.nearest_products(emb, 5)
    assert [m.product.product_id for m in matches] == ["b", "a"]
    assert matches[0].score == pytest.approx(1.0, abs=1e-4)


def test_bad_photo_writes_nothing(service):
    with pytest.raises(PhotoError) as err:
        service.put_product(product("a"), [photo(0), Photo(b"not an image", "notes.txt")])
    assert err.value.position == 1 and err.value.name == "notes.txt"
    assert service.store.count_products() == 0 and len(service.index) == 0
    assert not [p for p in (service.settings.data_dir / "images").rglob("*") if p.is_file()]
    assert len(service.store.image_ids()) == 0


def test_reimport_is_idempotent(service):
    service.put_product(product("a"), [photo(0)])
    service.put_product(product("a"), [photo(0), photo(1)])
    assert len(service.store.image_ids()) == 2 and len(service.index) == 2


def test_delete_removes_vectors_and_files(service):
    service.put_product(product("a"), [photo(0)])
    service.put_product(product("b"), [photo(1)])
    sha = service.store.images_of(["a"])["a"][0].sha256
    service.delete_product("a")
    assert len(service.index) == 1
    with pytest.raises(FileNotFoundError):  # its file, or its bytes in the database, went with it
        service.files.read(sha)
    emb = service.prepare([photo(0)])[0][0].embedding
    assert [m.product.product_id for m in service.ranking.nearest_products(emb, 5)] == ["b"]


def test_snapshot_survives_restart(service):
    service.put_product(product("a"), [photo(0), photo(1)])
    service.close()
    svc = reopen(service)
    assert sorted(svc.index.ids()) == sorted(svc.store.image_ids())
    assert len(svc.index) == 2


def test_crash_before_index_snapshot_is_repaired(service):
    """Committed to SQLite, never snapshotted (the process died): the next start rebuilds the index."""
    service.put_product(product("a"), [photo(0)])
    service.save_index()
    service.put_product(product("b"), [photo(1), photo(2)])  # snapshot interval is an hour: not saved
    svc = reopen(service)  # no close(): as after kill -9
    assert len(svc.index) == 3
    emb = svc.prepare([photo(2)])[0][0].embedding
    assert svc.ranking.nearest_products(emb, 1)[0].product.product_id == "b"


def test_snapshot_naming_deleted_rows_is_repaired(service):
    service.put_product(product("a"), [photo(0)])
    service.put_product(product("b"), [photo(1)])
    service.save_index()
    with service.store.engine.begin() as conn:  # a change the index never saw
        conn.execute(text("DELETE FROM products WHERE product_id = 'a'"))
    svc = reopen(service)
    assert len(svc.index) == 1 and list(svc.index.ids()) == list(svc.store.image_ids())


def test_corrupt_snapshot_is_rebuilt(service):
    service.put_product(product("a"), [photo(0)])
    service.close()
    service.index.snapshot.write_bytes(b"garbage")
    svc = reopen(service)
    assert len(svc.index) == 1


def test_model_change_reembeds_stored_photos(service):
    service.put_product(product("a"), [photo(0)])
    with service.store.engine.begin() as conn:
        conn.execute(
            text("UPDATE images SET model_id = 'old-model:0', embedding = :e"),
            {"e": np.zeros(1280, np.float32).tobytes()},
        )
    service.close()
    svc = reopen(service)
    assert not svc.store.stale_images(svc.model_id)
    emb = svc.prepare([photo(0)])[0][0].embedding
    assert svc.ranking.nearest_products(emb, 1)[0].score == pytest.approx(1.0, abs=1e-4)


def test_category_filter(service):
    service.put_product(product("apple", "Granny", "Apple"), [photo(0)])
    service.put_product(product("milk", "Oat", "Milk"), [photo(1)])
    emb = service.prepare([photo(0)])[0][0].embedding
    assert [m.product.product_id for m in service.ranking.nearest_products(emb, 5, "Milk")] == ["milk"]
    assert [m.product.product_id for m in service.ranking.nearest_products(emb, 5, "Oat")] == ["milk"]


def test_many_photos_of_one_product_do_not_crowd_out_others(service):
    service.put_product(product("a"), [photo(i) for i in range(0, 30)])
    service.put_product(product("b"), [photo(40)])
    emb = service.prepare([photo(0)])[0][0].embedding
    assert {m.product.product_id for m in service.ranking.nearest_products(emb, 2)} == {"a", "b"}


# -- the index on its own ------------------------------------------------------------------------


def unit(n, d, seed=0):
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("threshold", [10_000, 10])  # flat, HNSW
def test_index_add_remove_search_save_load(tmp_path, threshold):
    vecs = unit(200, 32)
    index = FaissIndex(32, threshold)
    index.rebuild([IndexEntries(np.arange(200, dtype=np.int64), vecs)])
    assert index.is_hnsw == (threshold == 10)
    scores, ids = index.search(vecs[7], 3)
    assert ids[0] == 7 and scores[0] == pytest.approx(1.0, abs=1e-5)
    index.remove([7])
    assert 7 not in index.search(vecs[7], 10)[1] and len(index) == 199
    _, ids = index.search(vecs[7], 5, allowed=np.array([1, 2, 3]))
    assert set(ids) <= {1, 2, 3}
    index.save(tmp_path / "i.faiss", "m")
    loaded = FaissIndex.load(tmp_path / "i.faiss", "m", 32, threshold)
    assert sorted(loaded.ids()) == sorted(index.ids())
    assert FaissIndex.load(tmp_path / "i.faiss", "other-model", 32, threshold) is None


def test_hnsw_tombstones_trigger_rebuild():
    index = FaissIndex(16, hnsw_threshold=10)
    index.rebuild([IndexEntries(np.arange(50, dtype=np.int64), unit(50, 16))])
    index.remove(range(5))
    assert not index.needs_rebuild()
    index.remove(range(5, 15))
    assert index.needs_rebuild()


def test_hnsw_filter_and_tombstones_together():
    import gc

    vecs = unit(100, 16, seed=1)
    index = FaissIndex(16, hnsw_threshold=10)
    index.rebuild([IndexEntries(np.arange(100, dtype=np.int64), vecs)])
    index.remove([3])
    gc.collect()
    for _ in range(20):
        _, ids = index.search(vecs[3], 5, allowed=np.array([3, 4, 5]))
        assert set(ids) <= {4, 5} and len(ids) == 2


def test_every_searching_thread_runs_faiss_on_one_openmp_thread():
    """The API searches from worker threads; an OpenMP team left behind in one spins after each search and
    slows the next request's model run (omp_set_num_threads binds only the thread that calls it)."""
    import threading

    import faiss

    index = FaissIndex(16)
    index.rebuild([IndexEntries(np.arange(20, dtype=np.int64), unit(20, 16))])
    seen = {}

    def worker():
        seen["before"] = faiss.omp_get_max_threads()
        index.search(unit(1, 16)[0], 3)
        seen["after"] = faiss.omp_get_max_threads()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    if seen["before"] == 1:
        pytest.skip("one core: OpenMP already runs one thread")
    assert seen["after"] == 1


# -- ranking: category heads + embedding ----------------------------------------------------------


def test_photo_owners_follow_every_write(service, monkeypatch):
    """The owner cache behind ranking: codes name the right products, deleted photos read as GONE (also
    the ones never seen before), and a write starts a new generation without breaking codes already handed out."""
    import api.catalog.sql as store_module
    from api.catalog.sql import GONE

    monkeypatch.setattr(store_module, "SQL_VARIABLES", 2)  # look-ups in several statements
    service.put_product(product("a"), [photo(0), photo(1)])
    service.put_product(product("b"), [photo(2)])
    ids = service.store.image_ids()
    codes, names = service.store.owner_codes(ids)
    owners = [names[c] for c in codes]
    assert sorted(owners) == ["a", "a", "b"]
    b_photo = int(ids[owners.index("b")])
    far = int(ids.max()) + 5000  # never stored: grows the table, reads as gone
    codes, _ = service.store.owner_codes(np.array([far, b_photo]))
    assert codes[0] == GONE and names[codes[1]] == "b"

    service.delete_product("b")
    new_codes, new_names = service.store.owner_codes(np.array([b_photo, *ids[ids != b_photo]]))
    assert new_codes[0] == GONE and {new_names[c] for c in new_codes[1:]} == {"a"}
    assert names[codes[1]] == "b"  # the previous generation still reads as it did
    assert service.store.owner_codes(np.array([], np.int64))[0].shape == (0,)
