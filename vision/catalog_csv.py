"""The catalogue CSV: the one reader of `seesku catalog import`'s format, for the service and for export.

Columns: product_id, name, fine_category, coarse_category, and optionally description and images (photo
paths relative to the CSV, separated by ';'). UTF-8, with or without a byte-order mark (what spreadsheet
programs write).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = ("product_id", "name", "fine_category", "coarse_category", "description", "images")
REQUIRED = ("product_id", "name", "fine_category", "coarse_category")


@dataclass
class CatalogRow:
    product_id: str
    name: str
    fine_category: str
    coarse_category: str
    description: str = ""
    images: list[str] = field(default_factory=list)  # relative to the CSV's folder

    def product_fields(self) -> dict[str, str]:
        """The product's own fields (everything but the photos)."""
        return {
            "product_id": self.product_id,
            "name": self.name,
            "fine_category": self.fine_category,
            "coarse_category": self.coarse_category,
            "description": self.description,
        }


def read_catalog_csv(path: Path) -> list[CatalogRow]:
    """Every row of a catalogue CSV, or ValueError naming the file, the line and what is wrong."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = set(REQUIRED) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        rows = []
        for line, row in enumerate(reader, 2):
            product_id = (row["product_id"] or "").strip()
            if not product_id:
                raise ValueError(f"{path}:{line}: empty product_id")
            rows.append(
                CatalogRow(
                    product_id=product_id,
                    name=(row["name"] or "").strip(),
                    fine_category=(row["fine_category"] or "").strip(),
                    coarse_category=(row["coarse_category"] or "").strip(),
                    description=(row.get("description") or "").strip(),
                    images=[p.strip() for p in (row.get("images") or "").split(";") if p.strip()],
                )
            )
    return rows
