"""What one model version serves: its embedder, its vector index and the change follower that keeps the index
in step, its ranking and its match rule, bundled so that a model switch replaces them all at once.

A search reads `CatalogService.serving` once and uses that bundle throughout, so an answer is never half one
version and half the next. `start_serving` brings a version up beside the one serving: it embeds the photos
the version has no vectors of (stored for the other replicas too, api/catalog/sql_embeddings.py), opens or
builds its index, and follows the change log from before it started, embedding what other versions write
meanwhile; the switch itself is one assignment under the catalogue's write lock (CatalogService.switch_model).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from api.catalog.follow import ChangeFollower
from api.catalog.index import VectorIndex
from api.catalog.ranking import Ranking
from vision.manifest import ModelManifest
from vision.match_rule import RULE_FILE, MatchRule
from vision.preprocess import ImageError, InputSpec, load_image
from vision.runtimes import Embedder, EmbedderUnavailable

log = logging.getLogger("seesku.catalog")
EMBED_BATCH = 16
RETIRE_AFTER_S = 30.0  # an old version's embedder stays open this long for the searches still using it


@dataclass(frozen=True)
class Serving:
    embedder: Embedder
    model_dir: Path
    spec: InputSpec
    match_rule: MatchRule
    index: VectorIndex
    ranking: Ranking
    follower: ChangeFollower

    @property
    def manifest(self) -> ModelManifest:
        return self.embedder.manifest

    @property
    def model_id(self) -> str:
        return self.embedder.manifest.served_id


def load_embedder(embedder: Embedder, wait_s: float) -> None:
    """Load the model; a remote inference server may still be starting (containers come up in any order):
    wait for it a while, then fail with its reason rather than serve a catalogue that cannot be searched."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            embedder.load()
            return
        except EmbedderUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("waiting for the embedder: %s", exc)
            time.sleep(1.0)


def match_rule(model_dir: Path, model_id: str) -> MatchRule:
    rule = MatchRule.load(model_dir)
    if rule.calibrated_on is None:
        log.warning("%s has no %s: `matched` uses the uncalibrated threshold %s (seesku eval open-set "
                    "calibrates one)", model_dir, RULE_FILE, rule.threshold)  # fmt: skip
    elif rule.model != model_id:
        log.warning("%s was calibrated for %s, not %s", RULE_FILE, rule.model, model_id)
    return rule


class StaleEmbedder:
    """Embeds the photos a model version has no vectors of and stores them (CatalogStore.set_embeddings)."""

    def __init__(self, service, embedder: Embedder, spec: InputSpec, share: float = 1.0):
        self.store, self.files, self.limits = service.store, service.files, service.limits
        self.embedder, self.spec = embedder, spec
        self.model_id = embedder.manifest.served_id
        self.share = share  # of the time spent embedding; resting the rest leaves the cores to the searches

    def __call__(self, image_ids: Sequence[int] | None, progress: Callable[[int, int], None] | None = None) -> None:
        stale = self.store.stale_images(self.model_id, image_ids)
        if not stale:
            return
        if image_ids is None:
            log.warning("embedding %d photos stored by another model version for %s", len(stale), self.model_id)
        for start in range(0, len(stale), EMBED_BATCH):
            started = time.perf_counter()
            chunk, pixels = [], []
            for im in stale[start : start + EMBED_BATCH]:
                try:
                    pixels.append(load_image(self.files.read(im.sha256), self.spec, self.limits))
                    chunk.append(im.image_id)
                except (FileNotFoundError, ImageError):  # deleted meanwhile: nothing to serve
                    continue
            if chunk:
                self.store.set_embeddings(chunk, self.embedder.embed(np.stack(pixels)).embedding, self.model_id)
            if progress:
                progress(min(start + EMBED_BATCH, len(stale)), len(stale))
            if self.share < 1:
                time.sleep((time.perf_counter() - started) * (1 - self.share) / self.share)


def start_serving(
    service,
    embedder: Embedder,
    model_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    beside: bool = False,
) -> Serving:
    """A model version ready to serve; `beside`: while another version answers, which keeps the cores it
    needs (the catalogue is embedded at SEESKU_SWITCH_EMBED_SHARE of the time)."""
    settings, store = service.settings, service.store
    load_embedder(embedder, settings.inference_startup_wait_s)
    manifest = embedder.manifest
    spec = manifest.input.spec()
    embed_missing = StaleEmbedder(service, embedder, spec, settings.switch_embed_share if beside else 1.0)
    cursor = store.change_head()  # before the embedding and the comparison: what changes after it is followed
    embed_missing(None, progress)
    index, restored = settings.open_index(manifest.served_id, manifest.embedding_dim)
    stored = np.sort(store.image_ids())
    if not restored or not np.array_equal(np.sort(index.ids()), stored):
        reason = "no usable snapshot" if not restored else "index and catalogue disagree"
        log.warning("building the vector index of %s from %d photos (%s)", manifest.served_id, len(stored), reason)
        index.rebuild(store.iter_entries(manifest.served_id))
        index.persist()
    follower = ChangeFollower(
        store, index, service.write_lock, settings.follow_interval_s, manifest.served_id, embed_missing
    )
    follower.start_at(cursor)
    follower.catch_up()
    embed_missing.share = 1.0  # from now on it embeds only photos written meanwhile, before they are searched
    ranking = Ranking(store, index, manifest.fine_labels, settings.head_weight)
    return Serving(embedder, model_dir, spec, match_rule(model_dir, manifest.served_id), index, ranking, follower)


def retire(old: Serving) -> None:
    """Stop following for a version no longer served, and close its model once the searches that began on it
    have ended. Its index is not persisted again: the new version's snapshot takes its place."""
    old.follower.stop()
    timer = threading.Timer(RETIRE_AFTER_S, old.embedder.close)
    timer.daemon = True
    timer.start()
