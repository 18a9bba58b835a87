"""Milvus, the vector index every replica shares (`SEESKU_INDEX=milvus://HOST:PORT`), through pymilvus.

One collection per served model (`<prefix>_<hash of the model id>`): the photo id as primary key, its
embedding, and its product id and fine and coarse category as scalar fields, so a category filter runs
inside Milvus. Searches and reads ask for Strong consistency: a photo upserted or deleted through any
replica is seen by the next search through any other. Inner product over L2-normalised embeddings (= cosine),
exact (FLAT): the milvus-lite server of `make services` has FLAT and IVF_FLAT only, and a cluster can be given
an HNSW or IVF index on the same collection without changing this code.

Every change reaches it through the change log (api/catalog/follow.py): its writer upserts or deletes
before answering, and the other replicas add what a dead writer left out. Nothing here is per replica:
`persist` has nothing to keep. A server that cannot be reached raises
`IndexUnavailable` (503 with Retry-After) after `timeout_s`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import uuid
from collections.abc import Iterable, Sequence

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from api.catalog.records import IndexEntries, IndexUnavailable

UPSERT_BATCH = 1000
MAX_TOP_K = 16_384  # Milvus's largest limit of one search
LABEL_LENGTH = 512
STRONG = {"consistency_level": "Strong"}


def _unavailable(method):
    """Milvus or gRPC failures become IndexUnavailable with the server's reason."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # MilvusException, grpc errors: connection refused, timeouts
            if not isinstance(exc, MilvusException) and not type(exc).__module__.startswith(("grpc", "pymilvus")):
                raise
            # A gRPC channel that failed waits ever longer (up to 2 minutes) before it tries the server again:
            # the next call starts a new one, so a replica is back as soon as Milvus is.
            self._drop_client()
            raise IndexUnavailable(f"milvus at {self.uri}: {getattr(exc, 'message', exc)}") from exc

    return wrapper


def collection_name(prefix: str, model_id: str) -> str:
    """One collection per model: embeddings of two models are not comparable."""
    return f"{prefix}_{hashlib.sha256(model_id.encode()).hexdigest()[:16]}"


class MilvusIndex:
    shared = True
    filters_categories = True

    def __init__(self, uri: str, collection: str, dim: int, timeout_s: float = 3.0):
        self.uri, self.collection, self.dim, self.timeout_s = uri, collection, dim, timeout_s
        # pymilvus retries a failed call until `timeout` seconds have passed, but only an int counts (a float
        # falls back to 75 retries, minutes against a server that is down).
        self._rpc = {"timeout": max(1, round(timeout_s))}
        self._client: MilvusClient | None = None
        self._client_lock = threading.Lock()

    @property
    def client(self) -> MilvusClient:
        with self._client_lock:
            if self._client is None:
                # a connection of its own: pymilvus shares one per URI otherwise, and closing it closes it for all
                alias = f"seesku-{uuid.uuid4().hex}"
                self._client = MilvusClient(uri=self.uri, timeout=self.timeout_s, alias=alias)
            return self._client

    def _drop_client(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken channel may fail too; it is gone either way
                pass

    @_unavailable
    def ensure_collection(self) -> bool:
        """Create the collection unless it exists; whether it existed."""
        if self.client.has_collection(self.collection, **self._rpc):
            self.client.load_collection(self.collection, **self._rpc)
            return True
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        for label in ("product_id", "fine", "coarse"):
            schema.add_field(label, DataType.VARCHAR, max_length=LABEL_LENGTH)
        params = self.client.prepare_index_params()
        params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=params, **self._rpc, **STRONG)
        self.client.load_collection(self.collection, **self._rpc)
        return False

    @_unavailable
    def check(self) -> None:
        if not self.client.has_collection(self.collection, **self._rpc):
            raise IndexUnavailable(f"milvus at {self.uri} has no collection {self.collection}")

    # -- reads --------------------------------------------------------------------------------
    @_unavailable
    def __len__(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], **self._rpc, **STRONG)
        return int(rows[0]["count(*)"])

    @_unavailable
    def ids(self) -> np.ndarray:
        found, last = [], -1
        while True:
            rows = self.client.query(
                self.collection, filter=f"id > {last}", output_fields=["id"], limit=MAX_TOP_K, **self._rpc, **STRONG
            )
            if not rows:
                break
            page = sorted(r["id"] for r in rows)
            found.extend(page)
            last = page[-1]
        return np.unique(np.array(found, dtype=np.int64))  # Milvus may hold a primary key twice

    @_unavailable
    def missing(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        held: set[int] = set()
        for start in range(0, len(ids), UPSERT_BATCH):
            chunk = ids[start : start + UPSERT_BATCH].tolist()
            rows = self.client.query(
                self.collection, filter=f"id in {chunk}", output_fields=["id"], **self._rpc, **STRONG
            )
            held.update(r["id"] for r in rows)
        return ids[~np.isin(ids, np.fromiter(held, np.int64, len(held)))]

    @_unavailable
    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, categories: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        conditions = [f"(fine == {_quote(c)} or coarse == {_quote(c)})" for c in categories]
        if allowed is not None:
            conditions.append(f"id in {np.asarray(allowed, dtype=np.int64).tolist()}")
        hits = self.client.search(
            self.collection,
            data=[np.asarray(query, dtype=np.float32).reshape(-1).tolist()],
            limit=max(1, min(k, MAX_TOP_K)),
            filter=" and ".join(conditions),
            search_params={"metric_type": "IP"},
            **self._rpc,
            **STRONG,
        )[0]
        scores = np.array([h["distance"] for h in hits], dtype=np.float32)
        ids = np.array([h["id"] for h in hits], dtype=np.int64)
        first = np.sort(np.unique(ids, return_index=True)[1])  # a primary key Milvus holds twice, once
        return scores[first], ids[first]

    # -- changes ------------------------------------------------------------------------------
    @_unavailable
    def add(self, entries: IndexEntries) -> None:
        """Upsert: a photo held already gets its vector and labels replaced."""
        for start in range(0, len(entries), UPSERT_BATCH):
            end = min(start + UPSERT_BATCH, len(entries))
            rows = [
                {
                    "id": int(entries.ids[i]),
                    "vector": entries.vectors[i].astype(np.float32).tolist(),
                    "product_id": entries.product_ids[i],
                    "fine": entries.fine[i],
                    "coarse": entries.coarse[i],
                }
                for i in range(start, end)
            ]
            self.client.upsert(self.collection, rows, **self._rpc)

    @_unavailable
    def remove(self, ids: Iterable[int]) -> None:
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), UPSERT_BATCH):
            self.client.delete(self.collection, ids=ids[start : start + UPSERT_BATCH], **self._rpc)

    def rebuild(self, batches: Iterable[IndexEntries]) -> None:
        """Upsert every stored photo, then delete what the store no longer has. Changes made meanwhile by
        other replicas are in the change log after the cursor the caller read first, and re-applied."""
        stored = []
        for entries in batches:
            self.add(entries)
            stored.append(entries.ids)
        keep = np.concatenate(stored) if stored else np.empty(0, np.int64)
        held = self.ids()
        self.remove(held[~np.isin(held, keep)].tolist())

    def needs_rebuild(self) -> bool:
        return False

    def persist(self) -> None:
        """Nothing to keep: Milvus persists every change itself."""

    def close(self) -> None:
        self._drop_client()


def _quote(value: str) -> str:
    """A string literal of Milvus's filter language (JSON's escaping is the same)."""
    return json.dumps(value)


def open_milvus_index(url: str, prefix: str, model_id: str, dim: int, timeout_s: float) -> tuple[MilvusIndex, bool]:
    """The index at `milvus://HOST:PORT` for this model, and whether its collection existed already."""
    index = MilvusIndex("http://" + url.removeprefix("milvus://"), collection_name(prefix, model_id), dim, timeout_s)
    return index, index.ensure_collection()
