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
