"""The service on PostgreSQL: a replica started later on the same database serves what the first one
wrote (its vector index is rebuilt from the stored embeddings), and API keys and shopper events are shared."""

from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import KeyStore
from tests.conftest import SAMPLES, fresh_postgres_database, make_settings

PHOTOS = sorted((SAMPLES / "catalog").glob("*.jpg"))
PRODUCT = {"product_id": "pg-1", "name": "Oat milk", "fine_category": "Oat-Milk", "coarse_category": "Milk"}


def replica(data_dir, url, **overrides):
    return TestClient(create_app(make_settings(data_dir, database_url=url, load_samples=False, **overrides)))


def test_a_second_replica_on_the_same_postgres_serves_the_first_ones_writes(tmp_path, postgres_server):
    url = fresh_postgres_database(postgres_server)
    with replica(tmp_path / "a", url) as a:
        assert a.post("/v1/products", json=PRODUCT).status_code == 201
        added = a.post("/v1/products/pg-1/images", files=[("images", ("p.jpg", PHOTOS[3].read_bytes(), "image/jpeg"))])
        assert added.status_code == 201, added.text
        events = [
            {
                "user_id": "u1",
                "product_id": "pg-1",
                "type": "purchase",
                "channel": "app",
                "timestamp": "2026-12-03T08:00:00",
            }
        ]
        assert a.post("/v1/events", json={"events": events}).status_code == 200

    # B: its own, empty data dir (no index snapshot, no photo files), the same database
    with replica(tmp_path / "b", url) as b:
        hit = b.post("/v1/search", files={"image": ("q.jpg", PHOTOS[3].read_bytes(), "image/jpeg")}).json()
        assert hit["matches"][0]["product_id"] == "pg-1"
        assert hit["matches"][0]["visual_score"] > 0.999
        history = b.get("/v1/users/u1/history").json()
        assert [e["product_id"] for e in history["events"]] == ["pg-1"]


def test_api_keys_live_in_the_database(tmp_path, postgres_server):
    url = fresh_postgres_database(postgres_server)
    settings = make_settings(tmp_path / "cli", database_url=url)
    _, token = KeyStore(settings.database()).create("kiosk", ["search"])
    with replica(tmp_path / "a", url, require_keys=True) as a:
        assert a.get("/v1/categories", headers={"X-API-Key": token}).status_code == 200
        key_id = token.split("_")[1]
        assert KeyStore(settings.database()).revoke(key_id)
        assert a.get("/v1/categories", headers={"X-API-Key": token}).status_code == 401
