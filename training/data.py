"""Labelled product photos for training and evaluation.

Three layouts are read into one `PhotoSet`:
- the Grocery Store dataset (`train.txt`/`val.txt`/`test.txt` + `classes.csv` with iconic photos and
  descriptions), detected by its `dataset/classes.csv`;
- a merchant's folder: `DIR/<product_id>/*.jpg` or `DIR/<coarse>/<product_id>/*.jpg`, with an optional
  `DIR/<split>/...` level; a photo whose stem is `iconic` or `catalog` is that product's catalogue photo;
- a merchant's CSV: `path, product_id, fine, coarse` (paths relative to the CSV), optional `split` and
  `iconic` (1 marks the catalogue photo) columns.
Merchant data without splits gets a deterministic 90/10 train/val split by a hash of the path, so the same
photo always lands on the same side.
"""

from __future__ import annotations

import csv
import hashlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
SPLITS = ("train", "val", "test")
CATALOGUE_STEMS = {"iconic", "catalog", "catalogue"}


@dataclass(frozen=True)
class Photo:
    path: Path
    fine: int  # index into PhotoSet.fine_labels
    coarse: int  # index into PhotoSet.coarse_labels


@dataclass
class PhotoSet:
    """The photos of one split plus the label space and the catalogue (one iconic photo per product)."""

    photos: list[Photo]
    fine_labels: list[str]
    coarse_labels: list[str]
    fine_to_coarse: list[int]
    iconic: dict[int, Path] = field(default_factory=dict)  # fine index -> catalogue photo
    descriptions: dict[int, str] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.photos)

    def checksum(self) -> str:
        """sha256 over every photo's and catalogue photo's label and bytes: names the exact data trained on."""
        h = hashlib.sha256()
        items = [(p.path, self.fine_labels[p.fine]) for p in self.photos]
        items += [(path, self.fine_labels[i]) for i, path in sorted(self.iconic.items())]
        for path, label in items:
            h.update(label.encode() + b"\0" + path.name.encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()


def load_photos(data: str | Path, split: str) -> PhotoSet:
    """Read `split` of the data at `data` (a Grocery Store root, a merchant folder or a merchant CSV).

    `split` may join splits with `+` ("train+val": a final fit once the recipe was chosen on val); label
    indices agree across splits in every layout, so their photos simply add up."""
    if "+" in split:
        parts = [load_photos(data, part) for part in split.split("+")]
        merged = parts[0]
        for part in parts[1:]:
            if part.fine_labels != merged.fine_labels:
                raise ValueError(f"{data}: the splits of {split!r} do not share one label space")
            merged.photos = merged.photos + part.photos
        merged.source = merged.source.rsplit(":", 1)[0] + ":" + split
        return merged
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data} does not exist")
    if data.is_file():
        return read_csv(data, split)
    for root in (data, data / "dataset"):
        if (root / "classes.csv").is_file() and (root / f"{split}.txt").is_file():
            return read_grocery_store(root, split)
    return read_folder(data, split)


def read_grocery_store(root: Path, split: str) -> PhotoSet:
    """The Grocery Store dataset (Klasson et al., WACV 2019); `root` holds classes.csv and the split files."""
    fine_labels: list[str] = []
    coarse_by_id: dict[int, str] = {}
    fine_to_coarse: list[int] = []
    iconic: dict[int, Path] = {}
    descriptions: dict[int, str] = {}
    with open(root / "classes.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        for name, fine_id, coarse_name, coarse_id, iconic_path, description_path in reader:
            if int(fine_id) != len(fine_labels):
                raise ValueError(f"classes.csv: fine ids must be 0..N-1 in order, got {fine_id} for {name}")
            fine_labels.append(name)
            coarse_by_id[int(coarse_id)] = coarse_name
            fine_to_coarse.append(int(coarse_id))
            iconic_file = root / iconic_path.lstrip("/")
            if iconic_file.is_file():
                iconic[int(fine_id)] = iconic_file
            description_file = root / description_path.lstrip("/")
            if description_file.is_file():
                descriptions[int(fine_id)] = description_file.read_text(errors="replace").strip()
    coarse_labels = [coarse_by_id[i] for i in range(len(coarse_by_id))]
    photos = []
    for line in (root / f"{split}.txt").read_text().splitlines():
        if not line.strip():
            continue
        rel, fine_id, coarse_id = (part.strip() for part in line.split(","))
        photos.append(Photo(root / rel, int(fine_id), int(coarse_id)))
    return PhotoSet(photos, fine_labels, coarse_labels, fine_to_coarse, iconic, descriptions, f"grocery_store:{split}")


def _hash_split(path: Path) -> str:
    return "val" if zlib.crc32(path.as_posix().encode()) % 10 == 0 else "train"


class _Labels:
    """Builds label spaces in first-seen order and checks that a fine label has one coarse parent."""

    def __init__(self) -> None:
        self.fine: dict[str, int] = {}
        self.coarse: dict[str, int] = {}
        self.fine_to_coarse: list[int] = []

    def add(self, fine: str, coarse: str) -> tuple[int, int]:
        c = self.coarse.setdefault(coarse, len(self.coarse))
        if fine not in self.fine:
            self.fine[fine] = len(self.fine)
            self.fine_to_coarse.append(c)
        f = self.fine[fine]
        if self.fine_to_coarse[f] != c:
            raise ValueError(f"product {fine!r} appears under two coarse categories")
        return f, c

    def photo_set(self, photos, iconic, source) -> PhotoSet:
        return PhotoSet(photos, list(self.fine), list(self.coarse), self.fine_to_coarse, iconic, {}, source)


def read_folder(root: Path, split: str) -> PhotoSet:
    """`root/[split/][coarse/]product/photo.jpg`; labels span every split so indices agree across splits."""
    has_splits = any((root / s).is_dir() for s in SPLITS)
    labels = _Labels()
    photos, iconic = [], {}
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        parts = path.relative_to(root).parts[:-1]
        photo_split = None
        if has_splits:
            if not parts or parts[0] not in SPLITS:
                continue
            photo_split, parts = parts[0], parts[1:]
        if len(parts) not in (1, 2):
            raise ValueError(f"{path}: expected [split/][coarse/]product/photo, got {len(parts)} folder levels")
        fine = parts[-1]
        coarse = parts[0] if len(parts) == 2 else fine
        f, c = labels.add(fine, coarse)
        if path.stem.lower() in CATALOGUE_STEMS:
            iconic[f] = path
            continue
        if (photo_split or _hash_split(path.relative_to(root))) == split:
            photos.append(Photo(path, f, c))
    if not labels.fine:
        raise ValueError(f"{root}: no photos found in product folders")
    return labels.photo_set(photos, iconic, f"folder:{root}:{split}")


def read_csv(csv_path: Path, split: str) -> PhotoSet:
    """CSV with `path, product_id, fine, coarse` (+ optional `split`, `iconic`); fine defaults to product_id."""
    labels = _Labels()
    photos, iconic = [], {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "product_id"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            path = csv_path.parent / row["path"]
            fine = (row.get("fine") or row["product_id"]).strip()
            coarse = (row.get("coarse") or fine).strip()
            if not fine:
                raise ValueError(f"{csv_path}:{line}: empty product_id")
            fi, ci = labels.add(fine, coarse)
            if (row.get("iconic") or "").strip() in ("1", "true", "yes"):
                iconic[fi] = path
                continue
            if ((row.get("split") or "").strip() or _hash_split(Path(row["path"]))) == split:
                photos.append(Photo(path, fi, ci))
    return labels.photo_set(photos, iconic, f"csv:{csv_path}:{split}")
