"""What a data dir from before the shared database kept elsewhere, brought into the database once."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from sqlalchemy import Engine

from api.db.engine import dialect_insert
from api.db.tables import api_keys

log = logging.getLogger("seesku")

KEYS_FILE = "keys.sqlite3"  # API keys had a SQLite file of their own beside the catalogue


def import_keys_file(engine: Engine, data_dir: Path) -> int:
    """Copy the keys of `<data dir>/keys.sqlite3` into the database (a key already there is kept), then
    rename the file `.imported` so that it is read once; the number of keys copied."""
    path = data_dir / KEYS_FILE
    if not path.exists():
        return 0
    with sqlite3.connect(path) as old:
        has_table = old.execute("SELECT 1 FROM sqlite_master WHERE name = 'api_keys'").fetchone()
        rows = (
            old.execute("SELECT key_id, name, scopes, secret_sha256, created, revoked FROM api_keys").fetchall()
            if has_table
            else []
        )
    columns = ("key_id", "name", "scopes", "secret_sha256", "created", "revoked")
    insert = dialect_insert(engine)
    with engine.begin() as conn:
        for row in rows:
            conn.execute(insert(api_keys).values(dict(zip(columns, row))).on_conflict_do_nothing())
    path.rename(path.with_name(KEYS_FILE + ".imported"))
    log.info("imported %d API key(s) from %s into the database", len(rows), path)
    return len(rows)


JOBS_FILE = "jobs/jobs.sqlite3"  # tagging jobs had a queue file per data dir, and a state file per job


def import_jobs_file(engine: Engine, data_dir: Path) -> int:
    """Copy the tagging jobs of `<data dir>/jobs/jobs.sqlite3` into the database with their uploads and
    results (an active one is queued again: any replica resumes it from its results), then rename the file
    `.imported`; the number of jobs copied."""
    import json

    from api.db import tables as db
    from api.tagging.queue import insert_input

    path = data_dir / JOBS_FILE
    if not path.exists():
        return 0
    with sqlite3.connect(path) as old:
        jobs = old.execute("SELECT id, created, data FROM jobs").fetchall()
    insert = dialect_insert(engine)
    with engine.begin() as conn:
        for job_id, created, data in jobs:
            job = json.loads(data)
            state = "queued" if job["state"] in ("queued", "running") else job["state"]
            values = {"job_id": job_id, "state": state, "created": created, "data": json.dumps({**job, "state": state})}
            if conn.execute(insert(db.tagging_jobs).values(values).on_conflict_do_nothing()).rowcount == 0:
                continue  # imported before
            folder = path.parent / job_id
            upload = next((p for p in (folder / "input.zip", folder / "input.csv") if p.exists()), None)
            if upload is not None:
                insert_input(conn, job_id, upload)
            state_file = folder / "results.jsonl.state.sqlite3"
            if state_file.exists():
                with sqlite3.connect(state_file) as results:
                    rows = results.execute("SELECT key, ord, row, embedding, layout FROM photos").fetchall()
                    meta = dict(results.execute("SELECT name, value FROM meta").fetchall())
                columns = ("key", "ord", "row", "embedding", "layout")
                for row in rows:
                    conn.execute(insert(db.tagging_results).values(job_id=job_id, **dict(zip(columns, row))))
                conn.execute(
                    db.tagging_jobs.update().where(db.tagging_jobs.c.job_id == job_id).values(meta=json.dumps(meta))
                )
    path.rename(path.with_name(path.name + ".imported"))
    log.info("imported %d tagging job(s) from %s into the database", len(jobs), path)
    return len(jobs)
