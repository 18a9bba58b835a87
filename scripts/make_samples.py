"""Build samples/ from the Grocery Store dataset (run once; its output is committed).

    python scripts/make_samples.py ../shared/data/grocery_store

The catalogue: one product per fine class, its iconic photo, title and description, plus four shopper
photos of it from the *train* split as extra reference photos (a merchandiser's shelf shots: on val they
lift product R@5 of the pretrained model from 71 % with the iconic photo alone to 88 %). The queries: ten
shopper photos from the *val* split, drawn with a fixed seed from ten different classes. The served model's
final fit trained on val too, so ten more from the *test* split, drawn by the same rule, are the photos no
model here has seen (`queries-test/`): a demo and an end-to-end check only, never used to train or choose.
"""

import csv
import random
import shutil
import sys
from pathlib import Path

root = Path(sys.argv[1]) / "dataset"
out = Path(__file__).resolve().parents[1] / "samples"
(out / "catalog").mkdir(parents=True, exist_ok=True)

classes = list(csv.DictReader(open(root / "classes.csv")))
REFERENCE_PHOTOS = 4
train_by_class = {}
for line in (root / "train.txt").read_text().splitlines():
    if line.strip():
        path, fine_id, _ = line.split(", ")
        train_by_class.setdefault(fine_id, []).append(path)
ref_rng = random.Random(7)
fine_of = {}
with open(out / "catalog.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["product_id", "name", "fine_category", "coarse_category", "description", "images"])
    for c in classes:
        fine, coarse = c["Class Name (str)"], c["Coarse Class Name (str)"]
        fine_of[c["Class ID (int)"]] = (fine, coarse)
        iconic = root / c["Iconic Image Path (str)"].lstrip("/")
        infos = list(iconic.parent.glob("*_Information.txt"))
        title = next(
            (
                line.split(":", 1)[1].strip()
                for info in infos[:1]
                for line in info.read_text(encoding="utf-8-sig", errors="replace").splitlines()
                if line.startswith("Title:")
            ),
            fine,
        )
        desc = (
            (root / c["Product Description Path (str)"].lstrip("/"))
            .read_text(encoding="utf-8-sig", errors="replace")
            .strip()
        )
        shutil.copy(iconic, out / "catalog" / f"{fine}.jpg")
        images = [f"catalog/{fine}.jpg"]
        for path in sorted(ref_rng.sample(train_by_class[c["Class ID (int)"]], REFERENCE_PHOTOS)):
            shutil.copy(root / path, out / "catalog" / Path(path).name)
            images.append(f"catalog/{Path(path).name}")
        w.writerow([fine, title, fine, coarse, desc, ";".join(images)])


def write_queries(split: str, folder: str) -> int:
    """Ten photos of `split` from ten different classes, drawn with a fixed seed, into samples/`folder`/."""
    photos = [line.split(", ") for line in (root / f"{split}.txt").read_text().splitlines() if line.strip()]
    rng = random.Random(2026)
    picked, seen = [], set()
    for path, fine_id, _ in rng.sample(photos, len(photos)):
        if fine_id not in seen:
            seen.add(fine_id)
            picked.append((path, fine_id))
        if len(picked) == 10:
            break
    (out / folder).mkdir(parents=True, exist_ok=True)
    with open(out / f"{folder}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "product_id", "fine_category", "coarse_category", "source"])
        for path, fine_id in picked:
            fine, coarse = fine_of[fine_id]
            name = Path(path).name
            shutil.copy(root / path, out / folder / name)
            w.writerow([f"{folder}/{name}", fine, fine, coarse, f"GroceryStoreDataset dataset/{path}"])
    return len(picked)


queries = write_queries("val", "queries") + write_queries("test", "queries-test")
shutil.copy(root.parent / "LICENSE", out / "LICENSE-GroceryStoreDataset")
print(f"{len(classes)} products, {queries} queries -> {out}")
