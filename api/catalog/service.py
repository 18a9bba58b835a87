"""The catalogue service: photos in, products out, with the store and the index kept in agreement.

Write path: decode and embed every photo first (a bad photo fails the request before anything is
written), store the photo files (content-addressed, atomic rename), then one SQLite transaction for the
product and its photos' embeddings, then the in-memory index. A crash between the transaction and the
index snapshot is repaired on the next start: `open()` compares the snapshot's ids with the store's and
rebuilds the index from the stored embeddings when they differ.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from api.catalog.index import FaissIndex
from api.catalog.store import CatalogStore, Event, ImageRecord, NewImage, NotFound, Product
from api.personal import PersonalModel, softmax_shares
from api.settings import Settings
from vision.preprocess import (
    ImageError, Limits, decode_opened, load_image, open_image, thumbnail, to_model_input,
)
from vision.runtimes import Embedder, EmbedderUnavailable, create_embedder

log = logging.getLogger("seesku.catalog")
EMBED_BATCH = 16


class PhotoError(ValueError):
    """A photo in a multi-photo request was refused; says which one."""

    def __init__(self, position: int, name: str, error: ImageError):
        super().__init__(f"photo {position} ({name}): {error}")
        self.position, self.name, self.error = position, name, error


class UnknownCategory(ValueError):
    pass


@dataclass
class Photo:
    data: bytes
    name: str = ""


@dataclass
class Match:
    product: Product
    score: float  # what the results are ordered by (see CatalogService.rank)
    image_id: int  # the product photo that matched best
    visual_score: float = 0.0  # cosine similarity of the query to that photo
    category_probability: float | None = None  # P(fine category) from the heads; None: unknown to them
    personal_score: float | None = None  # the shopper model's share among the candidates; None: not personalised


@dataclass
class SearchResult:
    matches: list[Match]
    fine: list[tuple[str, float]]
    coarse: list[tuple[str, float]]
    timings_ms: dict[str, float] = field(default_factory=dict)


class PhotoFiles:
    """Original photo bytes, content-addressed under data_dir/images (kept for re-embedding)."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def write(self, sha256: str, data: bytes) -> None:
        path = self.path(sha256)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{sha256}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


def create_service_embedder(settings: Settings) -> Embedder:
    """The embedder that SEESKU_INFERENCE names, with its settings."""
    return create_embedder(
        settings.inference, settings.model_dir, settings.onnx_threads, settings.triton_model,
        settings.triton_timeout_s, settings.triton_retries,
    )


class CatalogService:
    def __init__(self, settings: Settings, embedder: Embedder | None = None):
        self.settings = settings
        self.embedder = embedder or create_service_embedder(settings)
        self.manifest = self.embedder.manifest
        self.model_id = f"{self.manifest.model_id}:{self.manifest.version}"
        self.spec = self.manifest.input.spec()
        self._fine_position = {label: i for i, label in enumerate(self.manifest.fine_labels)}
        recommender = settings.recommender_dir
        self.personal = PersonalModel(recommender) if recommender and (recommender / "manifest.json").exists() else None
        self.limits = Limits(settings.max_upload_bytes, settings.max_image_pixels)
        data_dir = settings.data_dir
        self.store = CatalogStore(data_dir / "catalog.sqlite3")
        self.files = PhotoFiles(data_dir / "images")
        self.index_path = data_dir / "index" / "images.faiss"
        self.index: FaissIndex | None = None
        self._write_lock = threading.Lock()  # one writer keeps store and index changes in the same order
        self._last_save = 0.0

    # -- start-up -----------------------------------------------------------------------------
    def open(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Load the model, bring stored embeddings up to the served model, load or rebuild the index."""
        self._load_embedder()
        self._reembed_stale(progress)
        dim = self.manifest.embedding_dim
        index = FaissIndex.load(self.index_path, self.model_id, dim, self.settings.hnsw_threshold)
        stored = np.sort(self.store.image_ids())
        if index is None or not np.array_equal(np.sort(index.ids()), stored):
            reason = "no usable snapshot" if index is None else "snapshot and catalogue disagree"
            log.warning("rebuilding the vector index from %d stored embeddings (%s)", len(stored), reason)
            index = FaissIndex(dim, self.settings.hnsw_threshold)
            index.rebuild(self.store.iter_embeddings())
            index.save(self.index_path, self.model_id)
        self.index = index
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
            self.store.set_embeddings([im.image_id for im in chunk], self.embedder.embed(pixels).embedding, self.model_id)
            if progress:
                progress(start + len(chunk), len(stale))

    def close(self) -> None:
        if self.index is not None:
            self.index.save(self.index_path, self.model_id)
        self.store.close()
        close_embedder = getattr(self.embedder, "close", None)
        if close_embedder:
            close_embedder()

    @property
    def ready(self) -> bool:
        """Started: open() loaded the model, then the index. A remote embedder that goes away later is
        reported per call (503 inference_unavailable) and by /readyz, not here."""
        return self.index is not None

    # -- photos -------------------------------------------------------------------------------
    def prepare(self, photos: Sequence[Photo]) -> list[tuple[NewImage, bytes]]:
        """Decode and embed every photo, or raise PhotoError for the first bad one."""
        decoded = []
        for position, photo in enumerate(photos):
            try:
                im = open_image(photo.data, self.limits)
                fmt, (width, height) = im.format, im.size  # the original's, before DCT scaling
                pixels = to_model_input(decode_opened(im, self.spec.resize_size), self.spec)
                decoded.append((photo, fmt, width, height, pixels))
            except ImageError as exc:
                raise PhotoError(position, photo.name, exc) from None
        prepared = []
        for start in range(0, len(decoded), EMBED_BATCH):
            chunk = decoded[start : start + EMBED_BATCH]
            embeddings = self.embedder.embed(np.stack([d[4] for d in chunk])).embedding
            for (photo, fmt, width, height, _), emb in zip(chunk, embeddings):
                prepared.append((
                    NewImage(
                        sha256=hashlib.sha256(photo.data).hexdigest(),
                        content_type=Image.MIME.get(fmt or "", "application/octet-stream"),
                        width=width, height=height, bytes=len(photo.data), embedding=emb,
                    ),
                    photo.data,
                ))
        return prepared

    # -- catalogue writes ---------------------------------------------------------------------
    def put_product(self, product: Product, photos: Sequence[Photo] = (), create_only: bool = False) -> Product:
        prepared = self.prepare(photos)
        with self._write_lock:  # files too: a concurrent delete must not drop a file being re-added
            self._write_files(prepared)
            saved, added = self.store.upsert_product(product, [p[0] for p in prepared], self.model_id, create_only)
            self._index_added(added, prepared)
        return saved

    def add_photos(self, product_id: str, photos: Sequence[Photo]) -> list[int]:
        self.store.get_product(product_id)  # 404 before the (slow) embedding
        prepared = self.prepare(photos)
        with self._write_lock:
            self._write_files(prepared)
            added = self.store.add_images(product_id, [p[0] for p in prepared], self.model_id)
            self._index_added(added, prepared)
        return [image_id for image_id, _ in added]

    def _write_files(self, prepared) -> None:
        for new, data in prepared:
            self.files.write(new.sha256, data)

    def _index_added(self, added: list[tuple[int, int]], prepared) -> None:
        if added:
            ids = np.array([image_id for image_id, _ in added], np.int64)
            self.index.add(ids, np.stack([prepared[pos][0].embedding for _, pos in added]))
        self._maybe_save()

    def delete_product(self, product_id: str) -> None:
        with self._write_lock:
            removed = self.store.delete_product(product_id)
            self.index.remove([im.image_id for im in removed])
            self._maybe_save()
            self._drop_files(removed)

    def delete_photo(self, product_id: str, image_id: int) -> None:
        with self._write_lock:
            removed = self.store.delete_image(product_id, image_id)
            self.index.remove([image_id])
            self._maybe_save()
            self._drop_files([removed])

    def _drop_files(self, images: Sequence[ImageRecord]) -> None:
        for im in images:
            if not self.store.sha_in_use(im.sha256):
                self.files.remove(im.sha256)

    def _maybe_save(self, force: bool = False) -> None:
        if self.index.needs_rebuild():
            self.index.rebuild(self.store.iter_embeddings())
            force = True
        if force or time.monotonic() - self._last_save >= self.settings.index_save_interval_s:
            self.index.save(self.index_path, self.model_id)
            self._last_save = time.monotonic()

    def save_index(self) -> None:
        with self._write_lock:
            self._maybe_save(force=True)

    # -- reads --------------------------------------------------------------------------------
    def photo_bytes(self, product_id: str, image_id: int) -> tuple[ImageRecord, bytes]:
        record = self.store.get_image(product_id, image_id)
        return record, self.files.read(record.sha256)

    def photo_thumbnail(self, product_id: str, image_id: int, size: int = 256) -> bytes:
        record = self.store.get_image(product_id, image_id)
        cache = self.settings.data_dir / "thumbs" / f"{record.sha256}-{size}.jpg"
        if cache.exists():
            return cache.read_bytes()
        data = thumbnail(self.files.read(record.sha256), size, self.limits)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, cache)
        return data

    def personal_scores(self, user_id: str | None) -> dict[str, float] | None:
        """The shopper model's scores from the user's merged history; None when there is nothing to go on."""
        if not user_id or self.personal is None:
            return None
        history = self.store.history(user_id, self.personal.manifest.max_len)
        return self.personal.scores(history) or None

    def search(self, data: bytes, k: int = 10, category: str | None = None, top_categories: int = 5,
               user_id: str | None = None, personal_weight: float | None = None) -> SearchResult:
        t0 = time.perf_counter()
        if category is not None and not self.store.has_category(category):
            raise UnknownCategory(category)
        pixels = load_image(data, self.spec, self.limits)
        t1 = time.perf_counter()
        out = self.embedder.embed(pixels[None])
        t2 = time.perf_counter()
        weight = self.settings.personal_weight if personal_weight is None else personal_weight
        personal = self.personal_scores(user_id) if weight > 0 else None
        matches = self.rank(out.embedding[0], out.fine_probs[0], k, category, personal, weight)
        t3 = time.perf_counter()
        return SearchResult(
            matches=matches,
            fine=_top(self.manifest.fine_labels, out.fine_probs[0], top_categories),
            coarse=_top(self.manifest.coarse_labels, out.coarse_probs[0], top_categories),
            timings_ms={
                "decode": (t1 - t0) * 1e3,
                "embed": (t2 - t1) * 1e3,
                "search": (t3 - t2) * 1e3,
                "total": (t3 - t0) * 1e3,
            },
        )

    def rank(self, embedding: np.ndarray, fine_probs: np.ndarray, k: int, category: str | None = None,
             personal: dict[str, float] | None = None, personal_weight: float = 0.0) -> list[Match]:
        """Rank products by embedding similarity and the category heads together, then for the shopper.

        score = visual_score + head_weight * P(product's fine category), where visual_score is the cosine
        similarity of the photo to the product's best-matching photo and P comes from the fine head. A
        product whose fine category the heads do not know (added after training) scores by visual_score
        alone. Candidates are the visual top max(4k, 32) plus the nearest products of each fine category
        the heads give >= 5 %, so a confident classification can surface a product no photo of which
        made the visual short-list. head_weight 0 (SEESKU_HEAD_WEIGHT) gives the pure visual order.

        Personal re-ranking (a shopper with history, `personal` = the shopper model's logits): the logits of
        the candidates are turned into a softmax over the candidates, personal_score, and
        score += personal_weight * personal_score. Candidates the shopper model does not know get 0.
        """
        weight = self.settings.head_weight
        pool = max(4 * k, 32)
        candidates = {m.product.product_id: m for m in self.nearest_products(embedding, pool, category)}
        if weight > 0:
            self._add_category_scores(candidates, embedding, fine_probs, k, category, weight)
        if personal and personal_weight > 0:
            self._add_personal_scores(candidates, personal, personal_weight)
        return sorted(candidates.values(), key=lambda m: -m.score)[:k]  # stable: ties keep the visual order

    def catalogue_matches(self, embedding: np.ndarray, fine_probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        """(product id, score) of the k best products by the search ranking rule: bulk tagging's matcher."""
        return [(m.product.product_id, m.score) for m in self.rank(embedding, fine_probs, k)]

    @staticmethod
    def _add_personal_scores(candidates: dict[str, Match], personal: dict[str, float], weight: float) -> None:
        known = [pid for pid in candidates if pid in personal]
        if not known:
            return
        for m in candidates.values():
            m.personal_score = 0.0
        for pid, p in zip(known, softmax_shares([personal[pid] for pid in known])):
            candidates[pid].personal_score = p
            candidates[pid].score += weight * p

    def _add_category_scores(self, candidates: dict[str, Match], embedding: np.ndarray, fine_probs: np.ndarray,
                             k: int, category: str | None, weight: float) -> None:
        labels = self.manifest.fine_labels
        confident = [i for i in np.argsort(-fine_probs)[:3] if fine_probs[i] >= 0.05]
        present = {m.product.fine_category for m in candidates.values()}
        for i in confident:
            if labels[i] in present:  # its nearest products are already candidates: skip the extra search
                continue
            for m in self.nearest_products(embedding, k, category, within=labels[i]):
                candidates.setdefault(m.product.product_id, m)
        position = self._fine_position
        for m in candidates.values():
            index = position.get(m.product.fine_category)
            if index is not None:
                m.category_probability = float(fine_probs[index])
                m.score = m.visual_score + weight * m.category_probability

    def nearest_products(self, embedding: np.ndarray, k: int, category: str | None = None, within: str | None = None) -> list[Match]:
        """The k products with the most similar photos (a product scores as its best-matching photo),
        optionally only in `category` and in `within` (both fine or coarse category names)."""
        allowed = self.store.image_ids(category) if category is not None else None
        if within is not None:
            inside = self.store.image_ids(within)
            allowed = inside if allowed is None else np.intersect1d(allowed, inside)
        if allowed is not None and not len(allowed):
            return []
        limit = len(self.index) if allowed is None else len(allowed)
        fetch = min(limit, max(4 * k, 32))
        while True:
            scores, ids = self.index.search(embedding, fetch, allowed)
            codes, names = self.store.owner_codes(ids)
            live = codes >= 0  # GONE: deleted between the index and the store read
            scores, ids, codes = scores[live], ids[live], codes[live]
            # each product's best photo is its first in score order
            first = np.sort(np.unique(codes, return_index=True)[1])
            if len(first) >= k or fetch >= limit:
                break
            fetch = min(limit, fetch * 4)
        top = first[:k]
        pids = [names[c] for c in codes[top].tolist()]
        products = self.store.get_products(pids)
        return [Match(products[pid], score, image_id, visual_score=score)
                for pid, score, image_id in zip(pids, scores[top].tolist(), ids[top].tolist()) if pid in products]

    # -- bulk import --------------------------------------------------------------------------
    def import_events_csv(self, path: Path) -> int:
        """Shopper events from a CSV (`user_id,product_id,type,channel,timestamp,event_id`; '#' lines are
        comments), skipping unknown products; idempotent by event_id."""
        from datetime import datetime, timezone

        with open(path, newline="") as f:
            rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
        known = {p.product_id for p in self.store.all_products()}
        events = []
        for row in rows:
            if row["product_id"] not in known:
                continue
            ts = datetime.fromisoformat(row["timestamp"])
            ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
            events.append(Event(row["user_id"], row["product_id"], row["type"], row["channel"], ts.timestamp(), row.get("event_id") or None))
        return self.store.add_events(events)[0]


    def import_csv(self, path: Path, progress: Callable[[int, int], None] | None = None) -> int:
        """Import a catalogue CSV (product_id, name, fine_category, coarse_category, description, images).

        `images` lists photo paths relative to the CSV, separated by ';'. Each product is one transaction;
        re-running an import updates products and skips photos they already have.
        """
        rows = read_catalog_csv(path)
        for done, row in enumerate(rows, 1):
            photos = [Photo((path.parent / rel).read_bytes(), rel) for rel in row.pop("images")]
            self.put_product(Product(**row), photos)
            if progress:
                progress(done, len(rows))
        self.save_index()
        return len(rows)

    def export_catalog(self, out_dir: Path) -> int:
        """Write out_dir/catalog.csv and its photos: the import format, so export -> import round-trips."""
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        count, after = 0, None
        with open(out_dir / "catalog.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            while page := self.store.list_products(after=after, limit=500):
                images = self.store.images_of([p.product_id for p in page])
                for p in page:
                    rels = []
                    for im in images[p.product_id]:
                        ext = im.content_type.rsplit("/", 1)[-1]
                        rel = f"images/{im.sha256}.{ext}"
                        (out_dir / rel).write_bytes(self.files.read(im.sha256))
                        rels.append(rel)
                    writer.writerow([p.product_id, p.name, p.fine_category, p.coarse_category, p.description, ";".join(rels)])
                    count += 1
                after = page[-1].product_id
        return count


CSV_COLUMNS = ("product_id", "name", "fine_category", "coarse_category", "description", "images")


def read_catalog_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"product_id", "name", "fine_category", "coarse_category"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        rows = []
        for line, row in enumerate(reader, 2):
            if not row["product_id"]:
                raise ValueError(f"{path}:{line}: empty product_id")
            rows.append({
                "product_id": row["product_id"].strip(),
                "name": row["name"].strip(),
                "fine_category": row["fine_category"].strip(),
                "coarse_category": row["coarse_category"].strip(),
                "description": (row.get("description") or "").strip(),
                "images": [p for p in (row.get("images") or "").split(";") if p.strip()],
            })
    return rows


def _top(labels: Sequence[str], probs: np.ndarray, n: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs)[:n]
    return [(labels[i], float(probs[i])) for i in order]


__all__ = ["CatalogService", "NotFound", "Photo", "PhotoError", "SearchResult", "UnknownCategory"]
