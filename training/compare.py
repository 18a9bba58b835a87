"""Is one model really more accurate than another on the same photos?

    python -m training.compare training/reports/per_photo/A-val.csv training/reports/per_photo/B-val.csv

Reads the per-photo predictions `seesku eval vision` writes for two models on the same split and prints, for
fine and coarse top-1, each model's accuracy, the photos only one of them gets right, and the exact McNemar
p-value: the chance of a split of those photos at least that lopsided if the two models were equally good.
On the 296 val photos of the Grocery Store a gap of a point or two is 3-6 photos, usually p > 0.05: no
ground to pick one model over the other, nor to spend a test evaluation on it.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from training.metrics import mcnemar_exact

LEVELS = ("fine", "coarse")


def read_predictions(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["photo"]: row for row in csv.DictReader(f)}


def compare(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]) -> dict:
    """Paired accuracy of A and B per level, over the photos both were evaluated on (which must be the same)."""
    if set(a) != set(b):
        raise ValueError(
            f"the two runs cover different photos ({len(set(a) ^ set(b))} differ): compare runs on the same split"
        )
    result = {"photos": len(a)}
    for level in LEVELS:
        right_a = {p for p, row in a.items() if row[f"{level}_predicted"] == row[level]}
        right_b = {p for p, row in b.items() if row[f"{level}_predicted"] == row[level]}
        only_a, only_b = len(right_a - right_b), len(right_b - right_a)
        result[level] = {
            "accuracy_a": round(len(right_a) / len(a), 4) if a else None,
            "accuracy_b": round(len(right_b) / len(b), 4) if b else None,
            "only_a_right": only_a,
            "only_b_right": only_b,
            "mcnemar_p": round(mcnemar_exact(only_a, only_b), 4),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="per-photo CSV of model A (per_photo/<model>-<split>.csv)")
    parser.add_argument("b", type=Path, help="per-photo CSV of model B, same split")
    args = parser.parse_args()
    result = {"a": str(args.a), "b": str(args.b), **compare(read_predictions(args.a), read_predictions(args.b))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
