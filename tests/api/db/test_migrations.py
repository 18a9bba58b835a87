"""The database's schema: migrations build the tables the code reads, a data dir from before the migrations
upgrades in place without loss, and a schema this version does not know is refused with what to do."""

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from api.auth import KeyStore
from api.catalog.records import NewImage
from api.db import migrate
from api.db.engine import create_engine, default_url, reading
from api.db.tables import metadata
from tests.conftest import make_settings, seesku

LEGACY_SCHEMA = Path(__file__).with_name("legacy_schema.sql")  # api/catalog/schema.sql before the migrations


def test_migrations_build_the_tables_the_code_reads(tmp_path, database_url):
    engine = create_engine(database_url or default_url(tmp_path))
    assert migrate.upgrade(engine) == (None, migrate.head_revision())
    with reading(engine) as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    assert migrate.upgrade(engine) == (migrate.head_revision(), migrate.head_revision())  # idempotent


def _legacy_data_dir(data_dir: Path) -> str:
    """A data dir as the code before the migrations left it: the catalogue file and a keys file of its own.
    Returns the API key's token."""
    data_dir.mkdir(parents=True)
    with sqlite3.connect(data_dir / "catalog.sqlite3") as conn:
        conn.executescript(LEGACY_SCHEMA.read_text())
        conn.execute("INSERT INTO products VALUES ('p1', 'Milk', 'Milk', 'Dairy', '', '{\"fat\": \"3%\"}', 1.0, 2.0)")
        conn.execute("INSERT INTO products VALUES ('p2', 'Oat', 'Oat-Milk', 'Dairy', '', '{}', 1.0, 2.0)")
        for sha in ("a1", "a2", "a3"):
            conn.execute(
                "INSERT INTO images (product_id, sha256, content_type, width, height, bytes, embedding, model_id,"
                " created_at) VALUES ('p1', ?, 'image/jpeg', 4, 4, 10, ?, 'm:1', 1.0)",
                (sha, np.full(8, 0.5, np.float32).tobytes()),
            )
        conn.execute("DELETE FROM images WHERE sha256 = 'a3'")  # the newest id, 3, was used once
        conn.execute(
            "INSERT INTO events (event_id, user_id, product_id, type, channel, ts) VALUES ('e1', 'u', 'p1', 'view', 'app', 5.0)"
        )
    secret = "s3cret"
    with sqlite3.connect(data_dir / "keys.sqlite3") as conn:
        conn.execute(
            "CREATE TABLE api_keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, "
            "secret_sha256 TEXT NOT NULL, created REAL NOT NULL, revoked REAL)"
        )
        conn.execute(
            "INSERT INTO api_keys VALUES ('k1', 'kiosk', 'search', ?, 1.0, NULL)",
            (hashlib.sha256(secret.encode()).hexdigest(),),
        )
    return f"sk_k1_{secret}"


def test_data_dir_from_before_the_migrations_upgrades_in_place(tmp_path):
    token = _legacy_data_dir(tmp_path / "data")
    settings = make_settings(tmp_path / "data", database_url=None)
    store = settings.create_store()  # start-up migrates it

    assert [p.product_id for p in store.all_products()] == ["p1", "p2"]
    assert store.get_product("p1").attributes == {"fat": "3%"}
    assert sorted(store.image_ids().tolist()) == [1, 2]
    assert [e.event_id for e in store.history("u")] == ["e1"]
    entries = next(store.iter_entries("m:1"))
    assert entries.ids.tolist() == [1, 2] and np.allclose(entries.vectors, 0.5)
    assert entries.product_ids == ["p1", "p1"]
    # photo ids stay never reused: the next photo is 4, not the 3 that was deleted
    photo = NewImage("b1", "image/jpeg", 4, 4, 10, np.zeros(8, np.float32))
    assert store.add_images("p2", [photo], "m:1") == [(4, 0)]
    assert [im.image_id for im in store.delete_product("p1")] == [1, 2]  # photos go with their product
    # the API key of the old keys file works, and that file is read once
    assert KeyStore(settings.database()).check(token).name == "kiosk"
    assert not (tmp_path / "data" / "keys.sqlite3").exists()
    with reading(settings.database()) as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def _set_revision(url: str, revision: str) -> None:
    with create_engine(url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_a_schema_this_version_does_not_know_is_refused(tmp_path, database_url):
    url = database_url or default_url(tmp_path)
    migrate.upgrade(create_engine(url))
    _set_revision(url, "9999_from_the_future")
    with pytest.raises(migrate.SchemaError, match="does not know.*migrated by a newer seesku"):
        make_settings(tmp_path, database_url=database_url).database()
    env = {"SEESKU_DATABASE_URL": url}
    for command in (["serve", "--port", "1"], ["db", "upgrade"], ["keys", "list"]):
        done = seesku(*command, data_dir=tmp_path, env_extra=env)
        assert done.returncode == 1 and "does not know" in done.stderr and "Traceback" not in done.stderr


def test_an_older_schema_waits_for_db_upgrade_when_auto_upgrade_is_off(tmp_path):
    url = default_url(tmp_path)
    migrate.upgrade(create_engine(url), "0001")
    with pytest.raises(migrate.SchemaError, match="run `seesku db upgrade`"):
        make_settings(tmp_path, db_auto_upgrade=False).database()
    done = seesku("db", "upgrade", data_dir=tmp_path)
    assert done.returncode == 0 and "0001 -> " + migrate.head_revision() in done.stdout
    make_settings(tmp_path, db_auto_upgrade=False).database()


def test_tagging_jobs_of_an_old_data_dir_come_into_the_database(tmp_path):
    """Jobs had a SQLite queue per data dir and a state file per job: both are copied in once, an
    interrupted job is queued again for any replica, and its finished photos stay done."""
    import json

    from api.tagging.queue import JobStore
    from api.tagging.state import SqlTagState, TagState

    jobs_dir = tmp_path / "data" / "jobs"
    for job_id, state in (("old-done", "done"), ("old-running", "running")):
        (jobs_dir / job_id).mkdir(parents=True)
        (jobs_dir / job_id / "input.zip").write_bytes(b"PK-zip-bytes")
        results = TagState(jobs_dir / job_id / "results.jsonl.state.sqlite3")
        results.check_meta(source="zip", model="m:1")
        results.add([("a.jpg", 0, {"path": "a.jpg", "status": "ok"}, np.ones(4, np.float32), np.ones(2, np.float32))])
        results.close()
        with sqlite3.connect(jobs_dir / "jobs.sqlite3") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL, data TEXT NOT NULL)")
            job = {"id": job_id, "state": state, "kind": "zip", "created": 1.0, "options": {}, "total": 2, "done": 1}
            conn.execute("INSERT INTO jobs VALUES (?, ?, ?)", (job_id, 1.0, json.dumps(job)))

    settings = make_settings(tmp_path / "data", database_url=None)
    engine = settings.database()
    store = JobStore(engine, tmp_path / "elsewhere")  # another replica's folder: the upload comes from the database
    assert store.get("old-done").state == "done"
    resumed = store.get("old-running")
    assert resumed.state == "queued" and resumed.done == 1
    assert store.input_file(resumed).read_bytes() == b"PK-zip-bytes"
    state = SqlTagState(engine, "old-running")
    assert state.done_keys() == {"a.jpg"} and state.rows() == [{"path": "a.jpg", "status": "ok"}]
    state.check_meta(source="zip", model="m:1")  # the same run: accepted
    assert not (jobs_dir / "jobs.sqlite3").exists()
