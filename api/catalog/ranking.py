"""The ranking rule: how products are ordered for a photo, and for a shopper. One module, used by search,
bulk tagging's catalogue matches and the recommendations' fallback.

score = visual_score + head_weight * P(product's fine category), where visual_score is the cosine
similarity of the photo to the product's best-matching photo and P comes from the fine head. A product whose
fine category the heads do not know (added after training) scores by visual_score alone. Candidates are the
visual top max(4k, 32) plus the nearest products of each fine category the heads give >= 5 %, so a confident
classification can surface a product no photo of which made the visual short-list. head_weight 0
(SEESKU_HEAD_WEIGHT) gives the pure visual order.

Personal re-ranking (a shopper with history, `personal` = the shopper model's logits): the logits of the
candidates are turned into a softmax over the candidates, personal_score, and
score += personal_weight * personal_score. Candidates the shopper model does not know get 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from api.catalog.index import VectorIndex
from api.catalog.records import Product
from api.catalog.store import CatalogStore

CATEGORY_MIN_PROBABILITY = 0.05  # fine categories the heads give at least this bring their own candidates
CATEGORY_CANDIDATES = 3  # ... of the heads' top this many


@dataclass
class CatalogueMatches:
    """Bulk tagging's answer for one photo: the k best products by the search rule, and whether the first is
    judged to be the photographed one (the same `matched` as a search)."""

    matches: list[tuple[str, float]]  # (product id, score)
    matched: bool
    confidence: float


@dataclass
class Match:
    product: Product
    score: float  # what the results are ordered by (see the module's docstring)
    image_id: int  # the product photo that matched best
    visual_score: float = 0.0  # cosine similarity of the query to that photo
    category_probability: float | None = None  # P(fine category) from the heads; None: unknown to them
    personal_score: float | None = None  # the shopper model's share among the candidates; None: not personalised


def softmax_shares(logits: Sequence[float]) -> list[float]:
    """The shopper model's logits as shares summing to 1 (of the candidates, or of the catalogue)."""
    values = np.asarray(logits, dtype=np.float64)
    shares = np.exp(values - values.max())
    return (shares / shares.sum()).tolist()


def top_labels(labels: Sequence[str], probs: np.ndarray, n: int) -> list[tuple[str, float]]:
    order = np.argsort(-probs)[:n]
    return [(labels[i], float(probs[i])) for i in order]


class Ranking:
    def __init__(self, store: CatalogStore, index: VectorIndex, fine_labels: Sequence[str], head_weight: float):
        self.store, self.index = store, index
        self.fine_labels = list(fine_labels)
        self.head_weight = head_weight
        self._fine_position = {label: i for i, label in enumerate(self.fine_labels)}

    def rank(
        self,
        embedding: np.ndarray,
        fine_probs: np.ndarray,
        k: int,
        category: str | None = None,
        personal: dict[str, float] | None = None,
        personal_weight: float = 0.0,
    ) -> list[Match]:
        """The k best products for a photo's embedding and fine probabilities, by the rule above."""
        pool = max(4 * k, 32)
        candidates = {m.product.product_id: m for m in self.nearest_products(embedding, pool, category)}
        if self.head_weight > 0:
            self._add_category_scores(candidates, embedding, fine_probs, k, category)
        if personal and personal_weight > 0:
            self._add_personal_scores(candidates, personal, personal_weight)
        return sorted(candidates.values(), key=lambda m: -m.score)[:k]  # stable: ties keep the visual order

    def category_probability(self, product: Product, fine_probs: np.ndarray) -> float | None:
        """The heads' probability of the product's fine category; None for a category they do not know."""
        index = self._fine_position.get(product.fine_category)
        return None if index is None else float(fine_probs[index])

    def recommend(self, personal: dict[str, float], products: dict[str, Product], k: int) -> list[tuple[str, float]]:
        """(product id, share) of the shopper model's k best products in the catalogue; [] without scores."""
        scored = [(pid, s) for pid, s in personal.items() if pid in products]
        if not scored:
            return []
        shares = softmax_shares([s for _, s in scored])
        return sorted(zip([pid for pid, _ in scored], shares), key=lambda r: -r[1])[:k]

    def popular(self, k: int) -> list[tuple[str, float]]:
        """(product id, share of events) of the k products shoppers touched most: the fallback without history."""
        popular = self.store.popular_products(k)
        total = sum(n for _, n in popular) or 1
        return [(pid, n / total) for pid, n in popular]

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

    def _add_category_scores(
        self, candidates: dict[str, Match], embedding: np.ndarray, fine_probs: np.ndarray, k: int, category: str | None
    ) -> None:
        labels = self.fine_labels
        top = np.argsort(-fine_probs)[:CATEGORY_CANDIDATES]
        confident = [i for i in top if fine_probs[i] >= CATEGORY_MIN_PROBABILITY]
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
                m.score = m.visual_score + self.head_weight * m.category_probability

    def nearest_products(
        self, embedding: np.ndarray, k: int, category: str | None = None, within: str | None = None
    ) -> list[Match]:
        """The k products with the most similar photos (a product scores as its best-matching photo),
        optionally only in `category` and in `within` (both fine or coarse category names)."""
        categories = [c for c in (category, within) if c is not None]
        allowed = None
        if categories and not self.index.filters_categories:
            allowed = self.store.image_ids(categories[0])
            for other in categories[1:]:
                allowed = np.intersect1d(allowed, self.store.image_ids(other))
            if not len(allowed):
                return []
        limit = len(self.index) if allowed is None else len(allowed)
        fetch = min(limit, max(4 * k, 32))
        if fetch == 0:
            return []
        while True:
            if allowed is None:
                scores, ids = self.index.search(embedding, fetch, categories=categories)
            else:
                scores, ids = self.index.search(embedding, fetch, allowed)
            # an index that filters itself found fewer photos in the categories than were asked for: all of them
            exhausted = allowed is None and bool(categories) and len(ids) < fetch
            codes, names = self.store.owner_codes(ids)
            live = codes >= 0  # GONE: deleted between the index and the store read
            scores, ids, codes = scores[live], ids[live], codes[live]
            # each product's best photo is its first in score order
            first = np.sort(np.unique(codes, return_index=True)[1])
            if len(first) >= k or fetch >= limit or exhausted:
                break
            fetch = min(limit, fetch * 4)
        top = first[:k]
        pids = [names[c] for c in codes[top].tolist()]
        products = self.store.get_products(pids)
        return [
            Match(products[pid], score, image_id, visual_score=score)
            for pid, score, image_id in zip(pids, scores[top].tolist(), ids[top].tolist())
            if pid in products
        ]
