"""What a tagging run has done, in a SQLite file next to its output (`<out>.state.sqlite3`): one row per
photo with its result, embedding and layout vector. Each batch is one transaction, so a rerun skips what is
done and a kill at any moment loses at most the batches in flight."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
        rows, changed = [], []
        for key, row in self.db.execute("SELECT key, row FROM photos ORDER BY ord"):
            data = json.loads(row)
            group = groups.get(key)
            if data.get("duplicate_group") != group:
                data["duplicate_group"] = group
                changed.append((json.dumps(data), key))
            rows.append(data)
        with self.db:
            self.db.executemany("UPDATE photos SET row = ? WHERE key = ?", changed)
        return rows

    def close(self) -> None:
        self.db.close()
