"""Following the catalogue's change log: how every replica's vector index and read caches keep up with the
writes of every replica, its own included.

A write commits to the store, which appends what it changed to the log (api/catalog/sql_changes.py); then
the writer catches up before it answers, and on a shared database (PostgreSQL) so does every search on
every replica before it ranks. A search therefore sees every write acknowledged before it started, on
whichever replica it lands (one indexed query when nothing changed); a background poll keeps the other
reads that use the caches within `SEESKU_FOLLOW_INTERVAL_S` of the other replicas' writes (on the embedded
SQLite file, the writes of a command beside the server).

Catching up applies the changes after the cursor in log order, each image's net effect once: a removed
photo leaves the index, an added one is read back from the store (if it still exists) and added. A FAISS
index is this replica's own, so each replica applies every change to it. A shared index (Milvus) gets each
change from its writer, before the writer answers; another replica applies a change only once it is
`SHARED_GRACE_S` old and only what the index still lacks, so a writer that died between its commit and its
index write leaves nothing unindexed, and two replicas never upsert one photo at once (Milvus does not
keep primary keys unique under concurrent upserts). A change that cannot be applied (the index is down)
keeps the cursor where it was, and is applied by the next catch-up.

A follower serves one model version: it indexes that version's vectors of the photos, and a photo written by
a replica on another version (a switch, a rolling upgrade) is embedded by `embed_missing` first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from api.catalog.index import VectorIndex
from api.catalog.sql_changes import IMAGE_ADDED, IMAGE_REMOVED, PRODUCT_CHANGED, Change

log = logging.getLogger("seesku.catalog")
RETENTION_S = 24 * 3600  # how long the log keeps a change: a replica stalled longer resynchronises
PRUNE_EVERY_S = 600.0
BATCH = 10_000
SHARED_GRACE_S = 5.0  # a shared index's change older than this, from another replica, is checked and applied


class ChangeFollower:
    def __init__(
        self,
        store,
        index: VectorIndex,
        lock: threading.RLock,
        interval_s: float,
        model_id: str,
        embed_missing: Callable[[Sequence[int]], None],
    ):
        self.store, self.index, self.interval_s = store, index, interval_s
        self.model_id, self.embed_missing = model_id, embed_missing
        self._lock = lock  # the catalogue service's write lock: the index changes in one order
        self.cursor = 0
        self._verify = False  # check adds against the index's contents (the first catch-up after start)
        self._deferred: list[Change] = []  # other replicas' changes to a shared index, until SHARED_GRACE_S
        self._caught_up = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_at(self, cursor: int) -> None:
        """Follow from `cursor`, read before the index was loaded: some changes after it may be in the index
        already, so the first catch-up adds only what the index lacks."""
        self.cursor, self._verify = cursor, True

    def catch_up(self) -> int:
        """Apply every change after the cursor; how many there were."""
        if time.monotonic() - self._caught_up > RETENTION_S / 2:
            self._resync()
        if self._deferred and time.time() - self._deferred[0].at > SHARED_GRACE_S:
            with self._lock:
                self._apply_deferred()
        if not self.store.changes_since(self.cursor, limit=1):
            self._caught_up = time.monotonic()
            return 0
        applied = 0
        with self._lock:
            while changes := self.store.changes_since(self.cursor, BATCH):
                self.store.forget()
                if self.index.shared:  # the writers apply their own; the others' are checked later
                    mine = [c for c in changes if c.origin == self.store.origin]
                    self._deferred += [c for c in changes if c.origin != self.store.origin]
                    self._apply(mine, verify=self._verify)
                else:
                    self._apply(changes, verify=self._verify)
                self.cursor = changes[-1].seq
                applied += len(changes)
            self._verify = False
            self._caught_up = time.monotonic()
        return applied

    def _apply_deferred(self) -> None:
        cutoff = time.time() - SHARED_GRACE_S
        due = [c for c in self._deferred if c.at <= cutoff]
        # Only photos the index lacks (the writer has applied its change, unless it died); not relabels, which
        # every replica would upsert at about the same moment. A relabel whose writer died before it reached
        # the index waits for the next start's comparison.
        self._apply(due, verify=True, relabel=False)
        self._deferred = self._deferred[len(due) :]

    def _apply(self, changes: Sequence[Change], verify: bool, relabel: bool = True) -> None:
        present: dict[int, bool] = {}  # each image's net effect, in log order
        products: set[str] = set()
        for change in changes:
            if change.kind == IMAGE_ADDED:
                present[change.image_id] = True
            elif change.kind == IMAGE_REMOVED:
                present[change.image_id] = False
            elif change.kind == PRODUCT_CHANGED and relabel:
                products.add(change.product_id)
        removed = [image_id for image_id, there in present.items() if not there]
        if removed:
            self.index.remove(removed)
        added = {image_id for image_id, there in present.items() if there}
        if verify and added:
            ids = np.fromiter(sorted(added), np.int64, len(added))
            added = set(self.index.missing(ids).tolist())
        if products and self.index.filters_categories:  # the index holds each photo's categories
            images = self.store.images_of(sorted(products))
            added.update(im.image_id for ims in images.values() for im in ims)
        if added:
            self.embed_missing(sorted(added))  # photos another model version wrote, if any
            self.index.add(self.store.entries_of(sorted(added), self.model_id))  # those still in the store

    def _resync(self) -> None:
        """Stalled past the log's retention: start again from the store."""
        with self._lock:
            log.warning("change log followed too long ago: rebuilding the index from the store")
            cursor = self.store.change_head()
            if not self.index.shared:
                self.embed_missing(None)
                self.index.rebuild(self.store.iter_entries(self.model_id))
            self.store.forget()
            self._deferred = []
            self.start_at(cursor)
            self._caught_up = time.monotonic()

    # -- the background poll --------------------------------------------------------------------
    def start(self) -> None:
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="seesku-follow", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _poll(self) -> None:
        last_prune, failing = 0.0, False
        while not self._stop.wait(self.interval_s):
            try:
                self.catch_up()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    self.store.prune_changes(RETENTION_S)
                    last_prune = time.monotonic()
            except Exception as exc:  # the database or the index is away: the next round tries again
                if not failing:  # once per outage, not every round
                    log.warning("following the catalogue's changes failed (retrying quietly): %s", exc)
                failing = True
                continue
            if failing:
                log.warning("following the catalogue's changes again")
                failing = False
