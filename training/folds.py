"""K-fold selection sets over train + val: pick a recipe on ten times more photos than val, test untouched.

    python -m training.folds --data ../shared/data/grocery_store --k 5 --out runs/folds

writes `fold-1.csv` .. `fold-K.csv` in the merchant CSV layout (`training/data.py`): every train and val
photo once, with split `val` in exactly one fold and `train` in the others, dealt per product so each
fold's val holds every product in proportion; the catalogue photos as `iconic` rows; no test photo. Each
fold is then an ordinary data set for the existing commands:

    seesku train vision --data runs/folds/fold-1.csv --out runs/folds/A-1 ...      # recipe A, fold 1
    seesku eval vision --data runs/folds/fold-1.csv --split val --model runs/folds/A-1/product_embedder \\
        --out runs/folds/A                                                          # per_photo/ per fold

and `python -m training.compare runs/folds/A/per_photo runs/folds/B/per_photo` pairs two recipes over
all the train + val photos (2,936 for the Grocery Store instead of 296).
"""

from __future__ import annotations

import argparse
import csv
import random
from collections import defaultdict
from pathlib import Path

from training.data import PhotoSet, load_photos

SELECTION_SPLITS = ("train", "val")


def assign_folds(photo_sets: list[PhotoSet], k: int, seed: int = 0) -> dict[int, list[tuple[Path, int]]]:
    """Per product (fine index), its photos from all the sets with a fold each: dealt round-robin after a
    seeded shuffle, so fold sizes within a product, and overall, differ by at most one."""
    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    by_product: dict[int, list[Path]] = defaultdict(list)
    for photos in photo_sets:
        for p in photos.photos:
            by_product[p.fine].append(p.path)
    rng = random.Random(seed)
    folds, dealt = {}, 0
    for fine in sorted(by_product):
        paths = sorted(by_product[fine])
        rng.shuffle(paths)
        # Each product's deal starts where the last one stopped, so the folds also come out even in size.
        folds[fine] = [(path, (dealt + i) % k) for i, path in enumerate(paths)]
        dealt += len(paths)
    return folds


def write_folds(data: Path, k: int, out: Path, seed: int = 0) -> list[Path]:
    sets = [load_photos(data, split) for split in SELECTION_SPLITS]
    labels = sets[0]
    if any(s.fine_labels != labels.fine_labels for s in sets[1:]):
        raise ValueError(f"{data}: train and val disagree on the product labels")
    by_product = assign_folds(sets, k, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fold in range(k):
        path = out / f"fold-{fold + 1}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "product_id", "fine", "coarse", "split", "iconic"])
            # Product by product in label order, so the fold's labels come out in the source's order.
            for fine, name in enumerate(labels.fine_labels):
                coarse = labels.coarse_labels[labels.fine_to_coarse[fine]]
                if fine in labels.iconic:
                    writer.writerow([labels.iconic[fine].resolve(), name, name, coarse, "", "1"])
                for photo, photo_fold in by_product.get(fine, []):
                    writer.writerow([photo.resolve(), name, name, coarse, "val" if photo_fold == fold else "train", ""])
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a data set with train and val splits")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_folds(args.data, args.k, args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
