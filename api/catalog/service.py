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

from api.catalog.objects import DetectorUnavailable, FoundObject, answer_objects, object_inputs
from api.catalog.photos import Thumbnails
from api.catalog.ranking import CatalogueMatches, Match, top_labels
from api.catalog.records import ImageRecord, IndexUnavailable, NewImage, PhotoError, Product, UnknownCategory
from api.catalog.serving import EMBED_BATCH, Serving, retire, start_serving
from api.settings import Settings
from vision.manifest import ModelManifest
from vision.preprocess import ImageError, decode, prepare_photo, to_model_input
from vision.runtimes import Embedder, EmbedderUnavailable

log = logging.getLogger("seesku.catalog")


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
    manifest: ModelManifest | None = None  # the model version that answered
    personal_model: str | None = None  # the shopper model version that re-ranked it, if one did
    objects: list[FoundObject] | None = None  # each product found in the photo (objects=True), best first
    detector: str | None = None  # the detector version that found them


class CatalogService:
    def __init__(self, settings: Settings, embedder: Embedder | None = None, model_dir: Path | None = None):
        self.settings = settings
        self._model_dir = model_dir or settings.model_dir  # what open() serves (a switch may have asked another)
        self._embedder = embedder or settings.create_embedder(self._model_dir)  # until open(): serving.embedder
        self.limits = settings.limits()
        self.store = settings.create_store()
        self.files = settings.create_photo_store()
        self.thumbnails = Thumbnails(settings.data_dir / "thumbs", self.files, self.limits)
        self.serving: Serving | None = None  # the model version answering now; replaced whole by a switch
        self.detector = settings.create_detector()  # None: searches with objects=True get DetectorUnavailable
        # One writer at a time, and the index follows the log under the same lock, so store and index
        # change in the same order; a model switch takes it too.
        self.write_lock = threading.RLock()
        self._last_save = 0.0

    # The served version's parts (before open(): the configured model's, without an index).
    embedder = property(lambda self: self.serving.embedder if self.serving else self._embedder)
    manifest = property(lambda self: self.embedder.manifest)
    model_id = property(lambda self: self.manifest.served_id)
    spec = property(lambda self: self.serving.spec if self.serving else self.manifest.input.spec())
    index = property(lambda self: self.serving.index if self.serving else None)
    ranking = property(lambda self: self.serving.ranking if self.serving else None)
    follower = property(lambda self: self.serving.follower if self.serving else None)
    match_rule = property(lambda self: self.serving.match_rule if self.serving else None)

    # -- start-up and model switches ----------------------------------------------------------------
    def open(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Load the model, embed the photos it has no vectors of, load or rebuild the index, follow the log."""
        self.serving = start_serving(self, self._embedder, self._model_dir, progress)
        self.serving.follower.start()
        self._last_save = time.monotonic()

    def load_detector(self) -> None:
        """Load (and run once) the detector now rather than on the first objects search: what a server does at
        start-up. Not part of `open`: the command-line tools that open the catalogue never detect, and a process
        that had compiled a second OpenVINO graph crashed in the data-loader workers it forked to train."""
        if self.detector is None:
            return
        try:
            self.detector.load()
            size = self.detector.manifest.input.size
            self.detector.detect(np.zeros((1, size, size, 3), np.uint8))  # a runtime's first run is its slowest
        except EmbedderUnavailable as exc:  # a remote detector: objects searches say 503 until it is back
            log.warning("the product detector is not available yet: %s", exc)

    def switch_model(self, model_dir: Path, progress: Callable[[int, int], None] | None = None) -> str:
        """Serve the model in `model_dir` from now on, without a restart: it is loaded and the catalogue
        embedded and indexed for it while the current version keeps answering; then every later search is
        the new version's. Returns the new version's id."""
        embedder = self.settings.create_embedder(model_dir)
        if self.serving is not None and embedder.manifest.served_id == self.model_id:
            return self.model_id
        new = start_serving(self, embedder, model_dir, progress, beside=True)
        with self.write_lock:
            new.follower.catch_up()  # what was written while it was built
            old, self.serving = self.serving, new
            new.index.persist()
            self._last_save = time.monotonic()
        new.follower.start()
        if old is not None:
            retire(old)
        log.warning("now serving %s (was %s)", new.model_id, old.model_id if old else None)
        return new.model_id

    def close(self) -> None:
        if self.serving is not None:
            self.serving.follower.stop()
            self.serving.index.persist()
        self.store.close()
        self.embedder.close()
        if self.detector is not None:
            self.detector.close()

    @property
    def ready(self) -> bool:
        """Started: open() loaded the model, then the index. A remote embedder that goes away later is
        reported per call (503 inference_unavailable) and by /readyz, not here."""
        return self.serving is not None

    # -- the write path -----------------------------------------------------------------------
    def prepare(self, photos: Sequence[Photo], embedder: Embedder | None = None) -> list[tuple[NewImage, bytes]]:
        """Decode and embed every photo (with `embedder`, default the served one), or raise PhotoError for the
        first bad one."""
        embedder = embedder or self.embedder
        spec = embedder.manifest.input.spec()
        decoded = []
        for position, photo in enumerate(photos):
            try:
                header, pixels = prepare_photo(photo.data, spec, self.limits)
            except ImageError as exc:
                raise PhotoError(position, photo.name, exc) from None
            decoded.append((photo, header, pixels))
        prepared = []
        for start in range(0, len(decoded), EMBED_BATCH):
            chunk = decoded[start : start + EMBED_BATCH]
            embeddings = embedder.embed(np.stack([pixels for _, _, pixels in chunk])).embedding
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
        # The vectors are stored as the version that made them: one that switched meanwhile embeds them anew.
        embedder = self.embedder
        prepared = self.prepare(photos, embedder)
        self.index.check()  # a 503 before anything is written when the index is away
        with self.write_lock:  # files too: a concurrent delete must not drop a file being re-added
            self._write_files(prepared)
            model_id = embedder.manifest.served_id
            saved, _ = self.store.upsert_product(product, [p[0] for p in prepared], model_id, create_only)
            self._follow()
        return saved

    def update_product(self, product_id: str, changes: dict) -> Product:
        """Change a product's name, categories, description or attributes (its photos stay)."""
        self.index.check()
        with self.write_lock:
            updated = self.store.update_product(product_id, changes)
            self._follow()  # an index that filters by category holds the product's categories
            return updated

    def add_photos(self, product_id: str, photos: Sequence[Photo]) -> list[ImageRecord]:
        """Add photos to a product; returns those added (a photo it already has is skipped)."""
        self.store.get_product(product_id)  # 404 before the (slow) embedding
        embedder = self.embedder
        prepared = self.prepare(photos, embedder)
        self.index.check()  # a 503 before anything is written when the index is away
        with self.write_lock:
            self._write_files(prepared)
            added = self.store.add_images(product_id, [p[0] for p in prepared], embedder.manifest.served_id)
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
        with self.write_lock:
            removed = self.store.delete_product(product_id)
            self._drop_files(removed)
            self._follow()

    def delete_photo(self, product_id: str, image_id: int) -> None:
        self.index.check()
        with self.write_lock:
            removed = self.store.delete_image(product_id, image_id)
            self._drop_files([removed])
            self._follow()

    def _drop_files(self, images: Sequence[ImageRecord]) -> None:
        for im in images:
            if not self.store.sha_in_use(im.sha256):
                self.files.remove(im.sha256)

    def _maybe_save(self, force: bool = False) -> None:
        if self.index.needs_rebuild():
            self.index.rebuild(self.store.iter_entries(self.model_id))
            force = True
        if force or time.monotonic() - self._last_save >= self.settings.index_save_interval_s:
            self.index.persist()
            self._last_save = time.monotonic()

    def save_index(self) -> None:
        with self.write_lock:
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
        objects: bool = False,
    ) -> SearchResult:
        """Photo bytes -> the ranked products and the categories; `personal`: the shopper model's scores
        (ShopperService.personal_scores) for personal re-ranking; `objects`: also each product the detector
        finds in the photo, searched on its own (api/catalog/objects.py)."""
        serving = self.serving  # one version for the whole answer, whatever a switch does meanwhile
        if objects and self.detector is None:
            raise DetectorUnavailable("this service has no product detector (SEESKU_DETECTOR_DIR)")
        t_sync = time.perf_counter()
        if self.store.shared:  # every write acknowledged by any replica before this search is in it
            serving.follower.catch_up()
        t0 = time.perf_counter()
        if category is not None and not self.store.has_category(category):
            raise UnknownCategory(category)
        photo = decode(data, serving.spec.resize_size, self.limits)  # what load_image decodes
        pixels = to_model_input(photo, serving.spec)[None]
        timings = {"sync": t0 - t_sync, "decode": time.perf_counter() - t0}
        if objects:
            t_detect = time.perf_counter()
            boxes, crops = object_inputs(data, photo, self.detector, serving.spec, self.limits)
            pixels = np.concatenate([pixels, np.stack(crops)]) if crops else pixels
            timings["detect"] = time.perf_counter() - t_detect
        t1 = time.perf_counter()
        out = serving.embedder.embed(pixels)
        t2 = time.perf_counter()

        def rank(embedding: np.ndarray, fine_probs: np.ndarray) -> list[Match]:
            return serving.ranking.rank(embedding, fine_probs, k, category, personal, personal_weight)

        def categories(fine_probs: np.ndarray, coarse_probs: np.ndarray) -> tuple[list, list]:
            return (
                top_labels(serving.manifest.fine_labels, fine_probs, top_categories),
                top_labels(serving.manifest.coarse_labels, coarse_probs, top_categories),
            )

        matches = rank(out.embedding[0], out.fine_probs[0])
        matched, confidence = self.judge(matches, out.fine_probs[0], serving)
        fine, coarse = categories(out.fine_probs[0], out.coarse_probs[0])
        found = None
        if objects:
            rows = type(out)(out.embedding[1:], out.fine_probs[1:], out.coarse_probs[1:])
            found = answer_objects(boxes, rows, rank, lambda m, p: self.judge(m, p, serving), categories)
        t3 = time.perf_counter()
        timings.update(embed=t2 - t1, search=t3 - t2, total=t3 - t_sync)
        return SearchResult(
            matches=matches,
            fine=fine,
            coarse=coarse,
            manifest=serving.manifest,
            timings_ms={name: seconds * 1e3 for name, seconds in timings.items()},
            matched=matched,
            match_confidence=confidence,
            objects=found,
            detector=self.detector.manifest.served_id if objects else None,
        )

    def judge(
        self, matches: Sequence[Match], fine_probs: np.ndarray, serving: Serving | None = None
    ) -> tuple[bool, float]:
        """(matched, confidence): whether the first match is the photographed product (vision.match_rule)."""
        serving = serving or self.serving
        top = matches[0] if matches else None
        return serving.match_rule.judge(
            top and top.visual_score, top and serving.ranking.category_probability(top.product, fine_probs)
        )

    def tag_matcher(self) -> Callable[[np.ndarray, np.ndarray, int], CatalogueMatches]:
        """Bulk tagging's matcher: the search's ranking and `matched` for one photo's model outputs, bound to
        the version serving now, whose model the job embeds with (a job keeps its version across a switch)."""
        serving = self.serving

        def match(embedding: np.ndarray, fine_probs: np.ndarray, k: int) -> CatalogueMatches:
            ranked = serving.ranking.rank(embedding, fine_probs, max(k, 1))
            matched, confidence = self.judge(ranked, fine_probs, serving)
            return CatalogueMatches([(m.product.product_id, m.score) for m in ranked[:k]], matched, confidence)

        return match
