"""Bulk catalogue files: import and export in the catalogue CSV format (vision/catalog_csv.py), and the
shopper events CSV import (vision/recommender.py's reader: a timestamp without an offset is UTC)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from api.catalog.records import Product
from api.catalog.service import CatalogService, Photo
from vision.catalog_csv import COLUMNS, read_catalog_csv
from vision.recommender import read_events_csv


def import_catalog_csv(service: CatalogService, path: Path, progress: Callable[[int, int], None] | None = None) -> int:
    """Add or update the products of a catalogue CSV, each in its own transaction; re-running an import
    updates products and skips photos they already have. Returns the number of products."""
    rows = read_catalog_csv(path)
    for done, row in enumerate(rows, 1):
        photos = [Photo((path.parent / rel).read_bytes(), rel) for rel in row.images]
        service.put_product(Product(**row.product_fields()), photos)
        if progress:
            progress(done, len(rows))
    service.save_index()
    return len(rows)


def export_catalog_csv(service: CatalogService, out_dir: Path) -> int:
    """Write out_dir/catalog.csv and its photos: the import format, so export -> import round-trips."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    count, after = 0, None
    with open(out_dir / "catalog.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        while page := service.list_products(None, after, 500):
            for product, images in page:
                rels = []
                for im in images:
                    rel = f"images/{im.sha256}.{im.content_type.rsplit('/', 1)[-1]}"
                    (out_dir / rel).write_bytes(service.photo_bytes(product.product_id, im.image_id)[1])
                    rels.append(rel)
                writer.writerow(
                    [
                        product.product_id,
                        product.name,
                        product.fine_category,
                        product.coarse_category,
                        product.description,
                        ";".join(rels),
                    ]
                )
                count += 1
            after = page[-1][0].product_id
    return count


def import_events_csv(service: CatalogService, path: Path) -> int:
    """Shopper events of a CSV, skipping those of unknown products; idempotent by event_id. Returns how
    many were added."""
    known = {p.product_id for p in service.store.all_products()}
    events = [e for e in read_events_csv(path) if e.product_id in known]
    return service.store.add_events(events)[0]
