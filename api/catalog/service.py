"""The catalogue service: start-up, the write path, and the reads the routers need.

Write path (one lock, one transaction per change): decode and embed every photo first (a bad photo fails
the request before anything is written), store the photo files (content-addressed, atomic rename; or the
bytes go into the transaction when the database is the photo store), then one store transaction for the
product, its photos' embeddings and the change log, then the vector index catches up with the log
(api/catalog/follow.py), as every other replica's does. A crash between the transaction and the index
snapshot is repaired on the next start: `open()` compares the index's ids with the store's and rebuilds
the index from the stored embeddings when they differ, then follows the log from before that comparison.

The ranking rule is api/catalog/ranking.py; photo files and thumbnails api/catalog/photos.py; CSV import
and export api/catalog/csv_io.py.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from api.catalog.follow import ChangeFollower
from api.catalog.photos import Thumbnails
from api.catalog.ranking import CatalogueMatches, Match, Ranking, top_labels
from api.catalog.records import ImageRecord, IndexUnavailable, NewImage, PhotoError, Product, UnknownCategory
from api.settings import Settings
from vision.match_rule import RULE_FILE, MatchRule
from vision.preprocess import ImageError, load_image, prepare_photo
from vision.runtimes import Embedder, EmbedderUnavailable

log = logging.getLogger("seesku.catalog")
EMBED_BATCH = 16


@dataclass
class Photo:
    data: bytes
    name: str = ""


@dataclass
class SearchResult:
    matches: list[Match]
    fine: list[tuple[str, float]]
    coarse: list[tuple[str, float]]
    timings_ms: dict[str, float] = field(default_factory=dict)
    matched: bool = False  # the top product judged to be the photographed one (vision.match_rule)
    match_confidence: float = 0.0


class CatalogService:
    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self.embedder = embedder or settings.create_embedder()
        self.manifest = self.embedder.manifest
        self.model_id = self.manifest.served_id
        self.spec = self.manifest.input.spec()
        self.limits = settings.limits()
        self.match_rule = self._match_rule(settings.model_dir)
        self.store = settings.create_store()
        self.files = settings.create_photo_store()
        self.thumbnails = Thumbnails(settings.data_dir / "thumbs", self.files, self.limits)
        self.index = None
        self.follower: ChangeFollower | None = None
        self.ranking: Ranking | None = None
        # One writer at a time, and the index follows the log under the same lock, so store and index
        # change in the same order.
        self._write_lock = threading.RLock()
        self._last_save = 0.0

    # -- start-up -----------------------------------------------------------------------------
    def open(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Load the model, bring stored embeddings up to the served model, load or rebuild the index."""
        self._load_embedder()
        self._reembed_stale(progress)
        index, restored = self.settings.open_index(self.model_id, self.manifest.embedding_dim)
        cursor = self.store.change_head()  # before the comparison: what changes after it is followed
        stored = np.sort(self.store.image_ids())
        if not restored or not np.array_equal(np.sort(index.ids()), stored):
            reason = "no usable snapshot" if not restored else "index and catalogue disagree"
            log.warning("rebuilding the vector index from %d stored embeddings (%s)", len(stored), reason)
            index.rebuild(self.store.iter_entries())
            index.persist()
        self.index = index
        self.ranking = Ranking(self.store, index, self.manifest.fine_labels, self.settings.head_weight)
        self.follower = ChangeFollower(self.store, index, self._write_lock, self.settings.follow_interval_s)
        self.follower.start_at(cursor)
        self.follower.catch_up()
        self.follower.start()
        self._last_save = time.monotonic()

    def _load_embedder(self) -> None:
        # A remote inference server may still be starting (containers come up in any order): wait for it a
        # while, then fail with its reason rather than serve a catalogue that cannot be searched.
        deadline = time.monotonic() + self.settings.inference_startup_wait_s
        while True:
            try:
                self.embedder.load()
                return
            except EmbedderUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("waiting for the embedder: %s", exc)
                time.sleep(1.0)

    def _reembed_stale(self, progress) -> None:
        stale = self.store.stale_images(self.model_id)
        if not stale:
            return
        log.warning("re-embedding %d photos stored by another model", len(stale))
        for start in range(0, len(stale), EMBED_BATCH):
            chunk = stale[start : start + EMBED_BATCH]
            pixels = np.stack([load_image(self.files.read(im.sha256), self.spec, self.limits) for im in chunk])
            embeddings = self.embedder.embed(pixels).embedding
            self.store.set_embeddings([im.image_id for im in chunk], embeddings, self.model_id)
            if progress:
                progress(start + len(chunk), len(stale))

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.index is not None:
            self.index.persist()
        self.store.close()
        self.embedder.close()

    @property
    def ready(self) -> bool:
        """Started: open() loaded the model, then the index. A remote embedder that goes away later is
        reported per call (503 inference_unavailable) and by /readyz, not here."""
        return self.index is not None

    # -- the write path -----------------------------------------------------------------------
    def prepare(self, photos: Sequence[Photo]) -> list[tuple[NewImage, bytes]]:
        """Decode and embed every photo, or raise PhotoError for the first bad one."""
        decoded = []
        for position, photo in enumerate(photos):
            try:
                header, pixels = prepare_photo(photo.data, self.spec, self.limits)
            except ImageError as exc:
                raise PhotoError(position, photo.name, exc) from None
            decoded.append((photo, header, pixels))
        prepared = []
        for start in range(0, len(decoded), EMBED_BATCH):
            chunk = decoded[start : start + EMBED_BATCH]
            embeddings = self.embedder.embed(np.stack([pixels for _, _, pixels in chunk])).embedding
            for (photo, header, _), emb in zip(chunk, embeddings):
                new = NewImage(
                    sha256=hashlib.sha256(photo.data).hexdigest(),
                    content_type=header.content_type,
                    width=header.width,
                    height=header.height,
                    bytes=len(photo.data),
                    embedding=emb,
                    data=photo.data if self.files.in_database else None,
                )
                prepared.append((new, photo.data))
        return prepared

    def put_product(self, product: Product, photos: Sequence[Photo] = (), create_only: bool = False) -> Product:
        prepared = self.prepare(photos)
        self.index.check()  # a 503 before anything is written when the index is away
        with self._write_lock:  # files too: a concurrent delete must not drop a file being re-added
            self._write_files(prepared)
            saved, _ = self.store.upsert_product(product, [p[0] for p in prepared], self.model_id, create_only)
            self._follow()
        return saved

    def update_product(self, product_id: str, changes: dict) -> Product:
        """Change a product's name, categories, description or attributes (its photos stay)."""
        self.index.check()
        with self._write_lock:
            updated = self.store.update_product(product_id, changes)
            self._follow()  # an index that filters by category holds the product's categories
            return updated

    def add_photos(self, product_id: str, photos: Sequence[Photo]) -> list[ImageRecord]:
        """Add photos to a product; returns those added (a photo it already has is skipped)."""
        self.store.get_product(product_id)  # 404 before the (slow) embedding
        prepared = self.prepare(photos)
        self.index.check()  # a 503 before anything is written when the index is away
        with self._write_lock:
            self._write_files(prepared)
            added = self.store.add_images(product_id, [p[0] for p in prepared], self.model_id)
            self._follow()
        new_ids = {image_id for image_id, _ in added}
        return [im for im in self.product_images(product_id) if im.image_id in new_ids]

    def _write_files(self, prepared) -> None:
        for new, data in prepared:
            self.files.write(new.sha256, data)

    def _follow(self) -> None:
        """The index catches up with the change this process just committed (and any other replica's). An
        index that went away since the write's check gets it on its next catch-up: the change is committed,
        and no search runs before catching up."""
        try:
            self.follower.catch_up()
        except IndexUnavailable as exc:
            log.warning("committed; the index follows once it is back: %s", exc)
            return
        self._maybe_save()

    def delete_product(self, product_id: str) -> None:
        self.index.check()
        with self._write_lock:
            removed = self.store.delete_product(product_id)
            self._drop_files(removed)
            self._follow()

    def delete_photo(self, product_id: str, image_id: int) -> None:
        self.index.check()
        with self._write_lock:
            removed = self.store.delete_image(product_id, image_id)
            self._drop_files([removed])
            self._follow()

    def _drop_files(self, images: Sequence[ImageRecord]) -> None:
        for im in images:
            if not self.store.sha_in_use(im.sha256):
                self.files.remove(im.sha256)

    def _maybe_save(self, force: bool = False) -> None:
        if self.index.needs_rebuild():
            self.index.rebuild(self.store.iter_entries())
            force = True
        if force or time.monotonic() - self._last_save >= self.settings.index_save_interval_s:
            self.index.persist()
            self._last_save = time.monotonic()

    def save_index(self) -> None:
        with self._write_lock:
            self._maybe_save(force=True)

    # -- reads --------------------------------------------------------------------------------
    def get_product(self, product_id: str) -> tuple[Product, list[ImageRecord]]:
        """The product and its photos, or NotFound."""
        product = self.store.get_product(product_id)
        return product, self.product_images(product_id)

    def list_products(
        self, category: str | None, after: str | None, limit: int, text: str | None = None
    ) -> list[tuple[Product, list[ImageRecord]]]:
        page = self.store.list_products(category, after, limit, text)
        images = self.store.images_of([p.product_id for p in page])
        return [(p, images[p.product_id]) for p in page]

    def product_images(self, product_id: str) -> list[ImageRecord]:
        return self.store.images_of([product_id])[product_id]

    def photo_bytes(self, product_id: str, image_id: int) -> tuple[ImageRecord, bytes]:
        record = self.store.get_image(product_id, image_id)
        return record, self.files.read(record.sha256)

    def photo_thumbnail(self, product_id: str, image_id: int, size: int = 256) -> bytes:
        return self.thumbnails.get(self.store.get_image(product_id, image_id).sha256, size)

    def categories(self) -> list[tuple[str, str, int]]:
        """(fine, coarse, product count) of every fine category in the catalogue."""
        return self.store.categories()

    def count_products(self) -> int:
        return self.store.count_products()

    @property
    def vectors(self) -> int:
        """Photos in the vector index (0 before it is loaded)."""
        return len(self.index) if self.index is not None else 0

    def search(
        self,
        data: bytes,
        k: int = 10,
        category: str | None = None,
        top_categories: int = 5,
        personal: dict[str, float] | None = None,
        personal_weight: float = 0.0,
    ) -> SearchResult:
        """Photo bytes -> the ranked products and the categories; `personal`: the shopper model's scores
        (ShopperService.personal_scores) for personal re-ranking."""
        t_sync = time.perf_counter()
        if self.store.shared:  # every write acknowledged by any replica before this search is in it
            self.follower.catch_up()
        t0 = time.perf_counter()
        if category is not None and not self.store.has_category(category):
            raise UnknownCategory(category)
        pixels = load_image(data, self.spec, self.limits)
        t1 = time.perf_counter()
        out = self.embedder.embed(pixels[None])
        t2 = time.perf_counter()
        matches = self.ranking.rank(out.embedding[0], out.fine_probs[0], k, category, personal, personal_weight)
        t3 = time.perf_counter()
        timings = {"sync": t0 - t_sync, "decode": t1 - t0, "embed": t2 - t1, "search": t3 - t2, "total": t3 - t_sync}
        matched, confidence = self.judge(matches, out.fine_probs[0])
        return SearchResult(
            matches=matches,
            fine=top_labels(self.manifest.fine_labels, out.fine_probs[0], top_categories),
            coarse=top_labels(self.manifest.coarse_labels, out.coarse_probs[0], top_categories),
            timings_ms={name: seconds * 1e3 for name, seconds in timings.items()},
            matched=matched,
            match_confidence=confidence,
        )

    def judge(self, matches: Sequence[Match], fine_probs: np.ndarray) -> tuple[bool, float]:
        """(matched, confidence): whether the first match is the photographed product (vision.match_rule)."""
        top = matches[0] if matches else None
        return self.match_rule.judge(
            top and top.visual_score, top and self.ranking.category_probability(top.product, fine_probs)
        )

    def tag_matches(self, embedding: np.ndarray, fine_probs: np.ndarray, k: int) -> CatalogueMatches:
        """Bulk tagging's matcher: the search's ranking and `matched` for one photo's model outputs."""
        ranked = self.ranking.rank(embedding, fine_probs, max(k, 1))
        matched, confidence = self.judge(ranked, fine_probs)
        return CatalogueMatches([(m.product.product_id, m.score) for m in ranked[:k]], matched, confidence)

    def _match_rule(self, model_dir: Path) -> MatchRule:
        rule = MatchRule.load(model_dir)
        if rule.calibrated_on is None:
            log.warning("%s has no %s: `matched` uses the uncalibrated threshold %s (seesku eval open-set "
                        "calibrates one)", model_dir, RULE_FILE, rule.threshold)  # fmt: skip
        elif rule.model != self.model_id:
            log.warning("%s was calibrated for %s, not %s", RULE_FILE, rule.model, self.model_id)
        return rule
