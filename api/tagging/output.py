"""Tagging results as files: CSV or JSON lines, appended batch by batch (a valid partial file at any time)
and rewritten at the end, atomically, with the duplicate groups."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from vision.files import atomic_write

CSV_COLUMNS = [
    "path",
    "object",
    "box",
    "object_score",
    "status",
    "fine",
    "fine_probability",
    "coarse",
    "coarse_probability",
    "matches",
    "matched",
    "match_confidence",
    "objects",
    "duplicate_group",
    "flags",
    "blur_variance",
    "width",
    "height",
    "error",
]


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"{path.name}: the output must be .csv or .jsonl")
    return suffix[1:]


def format_rows(rows: Sequence[dict], fmt: str, header: bool) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    if header:
        writer.writeheader()
    for r in rows:
        flat = {
            **r,
            "flags": ";".join(r.get("flags", [])),
            "matches": ";".join(f"{m['product_id']}:{m['score']:.4f}" for m in r.get("matches", [])),
            "box": " ".join(f"{v:.4f}" for v in r["box"]) if "box" in r else None,
        }
        writer.writerow({k: ("" if v is None else v) for k, v in flat.items()})
    return buf.getvalue()


def write_output(path: Path, rows: Sequence[dict]) -> None:
    """Replace the output with `rows`, atomically."""
    atomic_write(path, format_rows(rows, output_format(path), header=True))


def append_output(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "a", newline="") as f:
        f.write(format_rows(rows, output_format(path), header=False))
        f.flush()
