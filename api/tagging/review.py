"""A merchandiser's review of a finished tagging job: a decision per photo, and one apply that turns them into
catalogue changes.

A decision adds the photo to a product as a reference photo, creates a new product from it, or skips it. It
is stored unsettled (`tagging_decisions`, api/db/tables.py) and may be changed until an apply settles it.
An apply works product by product, each in its own catalogue transaction (all of a product's photos or none
of them), and settles every decision it acted on with what happened (applied, skipped, or failed and why).
It only ever acts on unsettled decisions, so applying twice changes nothing more; a failed decision is
tried again once the merchandiser decides it anew. Every replica sees the same decisions: they live in the
database, like the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Engine, delete, select, update

from api.catalog.records import AlreadyExists, NotFound, PhotoError, Product
from api.db import tables as db
from api.db.engine import reading
from api.tagging.sources import Item

ACTIONS = ("add_photo", "new_product", "skip")
# A fine category the model gives less than even odds is a guess a person should look at.
LOW_CONFIDENCE = 0.5
NEW_PRODUCT_FIELDS = ("product_id", "name", "fine_category", "coarse_category")


class DecisionError(ValueError):
    """Decisions that cannot be taken: nothing of the request was stored."""


class AlreadyApplied(DecisionError):
    """A decision an apply has carried out: it can no longer change."""


@dataclass
class Decision:
    key: str  # the photo, as the job names it
    action: str  # one of ACTIONS
    product_id: str | None = None  # add_photo: the product; new_product: the new product's id
    product: dict | None = None  # new_product: its name, fine_category and coarse_category
    decided_at: float = 0.0
    outcome: str | None = None  # None until an apply settles it: applied | skipped | failed
    error: str | None = None
    applied_at: float | None = None


class DecisionStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def all(self, job_id: str) -> dict[str, Decision]:
        t = db.tagging_decisions
        with reading(self.engine) as conn:
            rows = conn.execute(select(t).where(t.c.job_id == job_id)).mappings().all()
        return {r["key"]: _decision(r) for r in rows}

    def record(self, job_id: str, decisions: Sequence[Decision]) -> None:
        """Store `decisions` in one transaction, replacing earlier unsettled ones; a photo whose decision an
        apply has already carried out keeps it (DecisionError, and nothing is stored)."""
        t = db.tagging_decisions
        keys = [d.key for d in decisions]
        now = time.time()
        with self.engine.begin() as conn:
            settled = conn.execute(
                select(t.c.key).where(t.c.job_id == job_id, t.c.key.in_(keys), t.c.outcome == "applied")
            ).scalars()
            settled = sorted(settled)
            if settled:
                raise AlreadyApplied(f"already applied, so it can no longer change: {', '.join(settled[:5])}")
            conn.execute(delete(t).where(t.c.job_id == job_id, t.c.key.in_(keys)))
            conn.execute(
                t.insert(),
                [
                    {
                        "job_id": job_id,
                        "key": d.key,
                        "action": d.action,
                        "product_id": d.product_id,
                        "product": json.dumps(d.product) if d.product else None,
                        "decided_at": now,
                    }
                    for d in decisions
                ],
            )

    def settle(self, job_id: str, keys: Sequence[str], outcome: str, error: str | None = None) -> None:
        t = db.tagging_decisions
        with self.engine.begin() as conn:
            conn.execute(
                update(t)
                .where(t.c.job_id == job_id, t.c.key.in_(list(keys)), t.c.outcome.is_(None))
                .values(outcome=outcome, error=error, applied_at=time.time())
            )


def _decision(row) -> Decision:
    return Decision(
        key=row["key"],
        action=row["action"],
        product_id=row["product_id"],
        product=json.loads(row["product"]) if row["product"] else None,
        decided_at=row["decided_at"],
        outcome=row["outcome"],
        error=row["error"],
        applied_at=row["applied_at"],
    )


def review_reasons(row: dict) -> list[str]:
    """Why a tagged photo needs a person: a low-confidence tag, a quality flag (blurry, small, ...), no
    catalogue product judged to be it, a near-duplicate of another photo, or a photo that could not be read."""
    if row.get("status") != "ok":
        return ["unreadable"]
    reasons = []
    if (row.get("fine_probability") or 0.0) < LOW_CONFIDENCE:
        reasons.append("low_confidence")
    if row.get("flags"):
        reasons.append("flagged")
    if not row.get("matches") or row.get("matched") is False:
        reasons.append("unmatched")
    if row.get("duplicate_group"):
        reasons.append("duplicate")
    return reasons


def check_decisions(decisions: Sequence[Decision], keys: set[str]) -> None:
    """Every decision names a photo of the job once and says what it needs; raises DecisionError."""
    seen: set[str] = set()
    for d in decisions:
        if d.key not in keys:
            raise DecisionError(f"the job has no photo {d.key!r}")
        if d.key in seen:
            raise DecisionError(f"{d.key}: decided twice in one request")
        seen.add(d.key)
        if d.action not in ACTIONS:
            raise DecisionError(f"{d.key}: action must be one of {', '.join(ACTIONS)}")
        if d.action == "add_photo" and not d.product_id:
            raise DecisionError(f"{d.key}: add_photo needs a product_id")
        if d.action == "new_product":
            missing = [f for f in NEW_PRODUCT_FIELDS if not (d.product or {}).get(f)]
            if missing:
                raise DecisionError(f"{d.key}: new_product needs {', '.join(missing)}")
            d.product_id = d.product["product_id"]


@dataclass
class ApplyReport:
    applied: list[dict] = field(default_factory=list)  # per product: product_id, created, photos, added
    failed: list[dict] = field(default_factory=list)  # per product: product_id, photos, error
    skipped: int = 0
    remaining: int = 0  # products still to apply (an apply with a product limit)


class CatalogWriter(Protocol):
    """What an apply needs of `api.catalog.service.CatalogService`."""

    def get_product(self, product_id: str): ...
    def put_product(self, product: Product, photos: Sequence, create_only: bool = False): ...
    def add_photos(self, product_id: str, photos: Sequence): ...


def apply_decisions(
    store: DecisionStore,
    job_id: str,
    items: dict[str, Item],
    catalog: CatalogWriter,
    photo: Callable[[bytes, str], object],
    max_products: int | None = None,
) -> ApplyReport:
    """Carry out the job's unsettled decisions, product by product; `photo(data, name)` makes the catalogue's
    photo record. An unreachable index (IndexUnavailable) stops the apply with nothing of that product
    written or settled: the next apply carries on from there."""
    report = ApplyReport()
    pending = [d for d in store.all(job_id).values() if d.outcome is None]
    skips = [d.key for d in pending if d.action == "skip"]
    if skips:
        store.settle(job_id, skips, "skipped")
    report.skipped = len(skips)
    groups: dict[str, list[Decision]] = {}
    for d in sorted((d for d in pending if d.action != "skip"), key=lambda d: (d.product_id, d.key)):
        groups.setdefault(d.product_id, []).append(d)
    todo = list(groups.items())
    if max_products is not None:
        todo, report.remaining = todo[:max_products], max(0, len(todo) - max_products)
    for product_id, decisions in todo:
        keys = [d.key for d in decisions]
        try:
            created, added = _apply_product(product_id, decisions, items, catalog, photo)
        except (NotFound, AlreadyExists, PhotoError, ValueError, OSError) as exc:
            error = _why(product_id, exc)
            store.settle(job_id, keys, "failed", error)
            report.failed.append({"product_id": product_id, "photos": keys, "error": error})
            continue
        store.settle(job_id, keys, "applied")
        report.applied.append({"product_id": product_id, "created": created, "photos": keys, "added": added})
    return report


def _apply_product(product_id, decisions, items, catalog, photo) -> tuple[bool, int]:
    """One product's photos in one catalogue transaction; returns (product created, photos added)."""
    unique = {}  # one photo uploaded twice in a job (a duplicate group) is one reference photo
    for d in decisions:
        unique.setdefault(items[d.key].read(), d.key)
    photos = [photo(data, key) for data, key in unique.items()]
    new = next((d.product for d in decisions if d.action == "new_product"), None)
    if new is not None:
        product = Product(**{f: new[f] for f in NEW_PRODUCT_FIELDS})
        try:
            catalog.put_product(product, photos, create_only=True)
            return True, len(photos)
        except AlreadyExists:
            existing, _ = catalog.get_product(product_id)
            if (existing.name, existing.fine_category, existing.coarse_category) != (
                product.name,
                product.fine_category,
                product.coarse_category,
            ):
                raise AlreadyExists(
                    f"a different product {product_id!r} exists already; add the photos to it instead"
                ) from None
            # The same product, created by an earlier apply that stopped before it settled: add what is missing.
    return False, len(catalog.add_photos(product_id, photos))


def _why(product_id: str, exc: Exception) -> str:
    if isinstance(exc, NotFound):
        return f"no product {product_id!r} in the catalogue (deleted since?)"
    return str(exc.args[0]) if exc.args else type(exc).__name__
