"""The vector index: the `VectorIndex` contract, and FAISS, the embedded implementation.

`VectorIndex` is what the catalogue service and the ranking rule use; `Settings.open_index()` picks the
implementation (`SEESKU_INDEX`). It is a derived view of the catalogue store, rebuilt from the stored
embeddings whenever the two disagree.

FAISS: inner product over L2-normalised photo embeddings, keyed by image id. Exact (flat) search below `hnsw_threshold` vectors, HNSW above. HNSW cannot remove vectors, so removals
there are tombstones filtered at search time, and the index is rebuilt once they pile up. The index is a
rebuildable view of the catalogue store: snapshots are written atomically (temp file + rename) with a
sidecar that names the model and the tombstones, and the service checks every snapshot against the store
on start.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from api.catalog.records import IndexEntries
from vision.files import atomic_write

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
TOMBSTONE_REBUILD_RATIO = 0.2
_openmp = threading.local()


class VectorIndex(Protocol):
    # One index for every replica (Milvus): each change is applied to it once per replica, idempotently.
    # False: each replica holds its own copy (FAISS) and follows the catalogue's change log.
    shared: bool
    # The index filters by category itself (`search(..., categories=)`, from the entries' labels); False:
    # the caller passes the allowed image ids.
    filters_categories: bool

    def __len__(self) -> int: ...

    def check(self) -> None:
        """Raise IndexUnavailable when the index cannot take a change now (a write asks before it commits)."""

    def ids(self) -> np.ndarray:
        """Every image id in the index."""

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """The ids among `ids` that the index does not hold."""

    def add(self, entries: IndexEntries) -> None:
        """Add photos, or replace those the index holds already."""

    def remove(self, ids: Iterable[int]) -> None: ...

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, categories: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one query vector; `allowed` restricts to those image ids, `categories` to
        photos of products in every one of those fine or coarse categories (filters_categories only)."""

    def rebuild(self, batches: Iterable[IndexEntries]) -> None:
        """Make the contents the photos of these batches (CatalogStore.iter_entries)."""

    def needs_rebuild(self) -> bool:
        """Removals or growth have made a rebuild worthwhile."""

    def persist(self) -> None:
        """Keep the contents across restarts where the backend needs it (a snapshot for FAISS)."""


def _one_openmp_thread() -> None:
    """One query at a time needs no OpenMP team: its workers only add wake-up latency, and after each
    search they spin, fighting ONNX Runtime for the cores. omp_set_num_threads binds only the thread that
    calls it, so every thread that touches the index calls it once (measured: the search endpoint's
    worker threads ran the next embed 1.3 ms slower while the spinning team of the last search held a core).
    """
    if not getattr(_openmp, "single", False):
        faiss.omp_set_num_threads(1)
        _openmp.single = True


class FaissIndex:
    shared = False
    filters_categories = False

    def __init__(self, dim: int, hnsw_threshold: int = 20_000, snapshot: Path | None = None, model_id: str = ""):
        self.dim = dim
        self.hnsw_threshold = hnsw_threshold
        self.snapshot, self.model_id = snapshot, model_id  # where `persist` writes, and for which model
        self._lock = threading.RLock()
        self._tombstones: set[int] = set()
        self._use(self._new(hnsw=False))

    # -- construction -------------------------------------------------------------------------
    def _new(self, hnsw: bool) -> faiss.Index:
        if hnsw:
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    def _use(self, index: faiss.IndexIDMap2) -> None:
        # Its kind is read once here: downcast_index on every search cost about 0.05 ms a query.
        self._index, self._hnsw = index, isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWFlat)

    def check(self) -> None:
        """In this process: always there."""

    @property
    def is_hnsw(self) -> bool:
        return self._hnsw

    def rebuild(self, batches: Iterable[IndexEntries]) -> None:
        """Replace the contents with these batches, e.g. from CatalogStore.iter_entries."""
        ids = [np.empty(0, np.int64)]
        vecs = [np.empty((0, self.dim), np.float32)]
        for entries in batches:
            if len(entries):
                ids.append(entries.ids)
                vecs.append(entries.vectors)
        all_ids, all_vecs = np.concatenate(ids), np.concatenate(vecs)
        index = self._new(hnsw=len(all_ids) > self.hnsw_threshold)
        _one_openmp_thread()
        if len(all_ids):
            index.add_with_ids(np.ascontiguousarray(all_vecs, np.float32), all_ids)
        with self._lock:
            self._use(index)
            self._tombstones = set()

    # -- mutation -----------------------------------------------------------------------------
    def add(self, entries: IndexEntries) -> None:
        """Add photos the index does not hold (a photo's vector never changes while the model stays)."""
        if not len(entries):
            return
        ids, vectors = entries.ids, np.ascontiguousarray(entries.vectors, dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have {vectors.shape[1]} dimensions; the index has {self.dim}")
        _one_openmp_thread()
        with self._lock:
            self._index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if not len(ids):
            return
        with self._lock:
            if self.is_hnsw:
                self._tombstones.update(int(i) for i in ids)
            else:
                self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def needs_rebuild(self) -> bool:
        with self._lock:
            total = self._index.ntotal
            live = total - len(self._tombstones)
            return len(self._tombstones) > TOMBSTONE_REBUILD_RATIO * max(total, 1) or (
                self.is_hnsw != (live > self.hnsw_threshold)
            )

    # -- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return self._index.ntotal - len(self._tombstones)

    def ids(self) -> np.ndarray:
        with self._lock:
            all_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            if self._tombstones:
                all_ids = all_ids[~np.isin(all_ids, np.fromiter(self._tombstones, np.int64))]
            return all_ids

    def missing(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        with self._lock:
            held = faiss.vector_to_array(self._index.id_map)
        return ids[~np.isin(ids, held)]

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, categories: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one query vector; `allowed` restricts to those image ids."""
        if categories:
            raise ValueError("FAISS does not filter by category: pass the allowed image ids")
        query = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        _one_openmp_thread()
        with self._lock:
            # SWIG selectors do not own the selectors they wrap: `keep` holds every one until the search ends.
            keep = []
            if allowed is not None:
                keep.append(faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64)))
            if self._tombstones:
                keep.append(faiss.IDSelectorBatch(np.fromiter(self._tombstones, np.int64)))
                keep.append(faiss.IDSelectorNot(keep[-1]))
                if allowed is not None:
                    keep.append(faiss.IDSelectorAnd(keep[0], keep[-1]))
            selector = keep[-1] if keep else None
            total = self._index.ntotal
            if total == 0:
                return np.empty(0, np.float32), np.empty(0, np.int64)
            k = max(1, min(k, total))
            params = None
            if selector is not None:
                params = (
                    faiss.SearchParametersHNSW(sel=selector, efSearch=max(HNSW_EF_SEARCH, k))
                    if self.is_hnsw
                    else faiss.SearchParameters(sel=selector)
                )
            elif self.is_hnsw:
                params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))
            scores, ids = self._index.search(query, k, params=params)
        found = ids[0] >= 0
        return scores[0][found], ids[0][found]

    # -- persistence --------------------------------------------------------------------------
    def persist(self) -> None:
        if self.snapshot is not None:
            self.save(self.snapshot, self.model_id)

    def save(self, path: Path, model_id: str) -> None:
        with self._lock:
            data = faiss.serialize_index(self._index)
            meta = {"model_id": model_id, "dim": self.dim, "tombstones": sorted(self._tombstones)}
        atomic_write(path, data.tobytes())
        atomic_write(path.with_suffix(".json"), json.dumps(meta))

    @classmethod
    def load(cls, path: Path, model_id: str, dim: int, hnsw_threshold: int) -> FaissIndex | None:
        """The saved snapshot, or None when there is none or it belongs to another model."""
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("model_id") != model_id or meta.get("dim") != dim:
                return None
            index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        except Exception:  # a damaged snapshot is just rebuilt
            return None
        out = cls(dim, hnsw_threshold)
        out._use(index)
        out._tombstones = set(meta.get("tombstones", []))
        return out


def open_faiss_index(snapshot: Path, model_id: str, dim: int, hnsw_threshold: int) -> tuple[FaissIndex, bool]:
    """The index of the snapshot at `snapshot` (True), or an empty one that will persist there (False)."""
    index = FaissIndex.load(snapshot, model_id, dim, hnsw_threshold)
    restored = index is not None
    if index is None:
        index = FaissIndex(dim, hnsw_threshold)
    index.snapshot, index.model_id = snapshot, model_id
    return index, restored
