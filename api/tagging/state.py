"""What a tagging run has done: one row per photo with its result, embedding and layout vector. Each batch
is one transaction, so a rerun skips what is done and a kill at any moment loses at most the batches in
flight. `TagState`: a SQLite file next to the output (`<out>.state.sqlite3`, `seesku tag`); `SqlTagState`:
the database's `tagging_results` (the API's jobs, which any replica may resume)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, bindparam, select, update

from api.db import tables as db
from api.db.engine import dialect_insert, reading


class TagState:
    """What a run has done: one row per photo with its result and embedding."""

    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS photos (key TEXT PRIMARY KEY, ord INTEGER NOT NULL, row TEXT NOT NULL, "
            "embedding BLOB, layout BLOB)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.commit()

    def check_meta(self, **values: str) -> None:
        """The state belongs to one input and one model: refuse to mix runs."""
        stored = dict(self.db.execute("SELECT name, value FROM meta"))
        for name, value in values.items():
            if name in stored and stored[name] != value:
                raise ValueError(f"{self.path} was made with {name}={stored[name]!r}, not {value!r}; use another --out")
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", values.items())

    def done_keys(self) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM photos")}

    def add(self, rows: Sequence[tuple[str, int, dict, np.ndarray | None, np.ndarray | None]]) -> None:
        def blob(v):
            return None if v is None else v.astype(np.float32).tobytes()

        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO photos VALUES (?, ?, ?, ?, ?)",
                [(k, o, json.dumps(r), blob(e), blob(lay)) for k, o, r, e, lay in rows],
            )

    def rows(self) -> list[dict]:
        return [json.loads(r) for (r,) in self.db.execute("SELECT row FROM photos ORDER BY ord")]

    def embeddings(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Keys, embeddings and layout vectors of every decoded photo, in input order."""
        keys, vectors, layouts = [], [], []
        for key, e, lay in self.db.execute(
            "SELECT key, embedding, layout FROM photos WHERE embedding IS NOT NULL ORDER BY ord"
        ):
            keys.append(key)
            vectors.append(np.frombuffer(e, dtype=np.float32))
            layouts.append(np.frombuffer(lay, dtype=np.float32))
        if not keys:
            return keys, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        return keys, np.stack(vectors), np.stack(layouts)

    def set_groups(self, groups: dict[str, int]) -> list[dict]:
        """Store each photo's duplicate group (None: none) and return every row in input order, as `rows`.
        Only rows whose group changed are rewritten: most photos have none, before and after."""
        rows, changed = regroup(self.db.execute("SELECT key, row FROM photos ORDER BY ord"), groups)
        with self.db:
            self.db.executemany("UPDATE photos SET row = ? WHERE key = ?", [(r, k) for k, r in changed])
        return rows

    def close(self) -> None:
        self.db.close()


def regroup(stored, groups: dict[str, int]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Each stored (key, row JSON) with its duplicate group set: every row in order, and the (key, row JSON)
    of those whose group changed (most photos have none, before and after)."""
    rows, changed = [], []
    for key, row in stored:
        data = json.loads(row)
        group = groups.get(key)
        if data.get("duplicate_group") != group:
            data["duplicate_group"] = group
            changed.append((key, json.dumps(data)))
        rows.append(data)
    return rows, changed


def _blob(v: np.ndarray | None) -> bytes | None:
    return None if v is None else v.astype(np.float32).tobytes()


class SqlTagState:
    """`TagState` of one API job in the shared database."""

    def __init__(self, engine: Engine, job_id: str):
        self.engine, self.job_id = engine, job_id
        self._mine = db.tagging_results.c.job_id == job_id
        self._upsert = dialect_insert(engine)(db.tagging_results)

    def _select(self, *columns):
        return select(*columns).where(self._mine).order_by(db.tagging_results.c.ord)

    def check_meta(self, **values: str) -> None:
        jobs = db.tagging_jobs
        with self.engine.begin() as conn:
            stored = json.loads(conn.execute(select(jobs.c.meta).where(jobs.c.job_id == self.job_id)).scalar_one())
            for name, value in values.items():
                if name in stored and stored[name] != value:
                    raise ValueError(f"job {self.job_id} was tagged with {name}={stored[name]!r}, not {value!r}")
            merged = json.dumps({**values, **stored})
            conn.execute(update(jobs).where(jobs.c.job_id == self.job_id).values(meta=merged))

    def done_keys(self) -> set[str]:
        with reading(self.engine) as conn:
            return set(conn.execute(select(db.tagging_results.c.key).where(self._mine)).scalars())

    def add(self, rows: Sequence[tuple[str, int, dict, np.ndarray | None, np.ndarray | None]]) -> None:
        values = [
            {
                "job_id": self.job_id,
                "key": k,
                "ord": o,
                "row": json.dumps(r),
                "embedding": _blob(e),
                "layout": _blob(lay),
            }
            for k, o, r, e, lay in rows
        ]
        if not values:
            return
        statement = self._upsert.on_conflict_do_update(
            index_elements=["job_id", "key"],
            set_={c: self._upsert.excluded[c] for c in ("ord", "row", "embedding", "layout")},
        )
        with self.engine.begin() as conn:
            conn.execute(statement, values)

    def rows(self) -> list[dict]:
        with reading(self.engine) as conn:
            return [json.loads(r) for r in conn.execute(self._select(db.tagging_results.c.row)).scalars()]

    def embeddings(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        t = db.tagging_results.c
        with reading(self.engine) as conn:
            found = conn.execute(self._select(t.key, t.embedding, t.layout).where(t.embedding.is_not(None))).all()
        if not found:
            return [], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        keys = [k for k, _, _ in found]
        vectors = np.stack([np.frombuffer(e, dtype=np.float32) for _, e, _ in found])
        return keys, vectors, np.stack([np.frombuffer(lay, dtype=np.float32) for _, _, lay in found])

    def set_groups(self, groups: dict[str, int]) -> list[dict]:
        t = db.tagging_results.c
        with reading(self.engine) as conn:
            rows, changed = regroup(conn.execute(self._select(t.key, t.row)), groups)
        changed = [{"k": k, "r": r} for k, r in changed]
        if changed:
            statement = (
                update(db.tagging_results).where(self._mine & (t.key == bindparam("k"))).values(row=bindparam("r"))
            )
            with self.engine.begin() as conn:
                conn.execute(statement, changed)
        return rows

    def close(self) -> None:
        """Nothing to release: the engine belongs to the settings."""
