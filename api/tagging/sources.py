"""Where the photos of a tagging run come from: a folder, a zip, or a CSV of paths.

Every source yields `(key, locator)` pairs: the key names the photo in the output (a path relative to the
folder or CSV, or the zip member name) and the locator is what a tagging worker needs to read its bytes.
Zips are checked before anything is read: absolute names, `..`, links and oversized members are refused,
and so are CSV paths that leave the allowed root.
"""

from __future__ import annotations

import csv
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}


class SourceError(ValueError):
    """An input we refuse as a whole (bad zip member, path outside the allowed root, bad CSV)."""


@dataclass(frozen=True)
class Item:
    key: str  # how the photo is named in the output
    path: str  # file path, or zip member name
    zip_path: str | None = None  # the zip holding `path`, if any

    def read(self, zips: dict[str, zipfile.ZipFile] | None = None) -> bytes:
        if self.zip_path is None:
            return Path(self.path).read_bytes()
        if zips is None:
            with zipfile.ZipFile(self.zip_path) as archive:
                return archive.read(self.path)
        archive = zips.get(self.zip_path)
        if archive is None:
            archive = zips[self.zip_path] = zipfile.ZipFile(self.zip_path)
        return archive.read(self.path)


def list_items(source: Path, allowed_root: Path | None = None, max_member_bytes: int = 50 * 1024 * 1024) -> list[Item]:
    """The photos of a folder (recursive), a .zip or a .csv (column `path`, relative to the CSV)."""
    if not source.exists():
        raise SourceError(f"{source} does not exist")
    if source.is_dir():
        root = source.resolve()
        _check_inside(root, allowed_root)
        return [
            Item(p.relative_to(root).as_posix(), str(p))
            for p in sorted(root.rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink()
        ]
    if source.suffix.lower() == ".zip":
        return list(_zip_items(source, max_member_bytes))
    if source.suffix.lower() == ".csv":
        return list(_csv_items(source, allowed_root))
    raise SourceError(f"{source}: expected a folder, a .zip or a .csv of paths")


def _check_inside(path: Path, allowed_root: Path | None) -> None:
    if allowed_root is not None and not path.resolve().is_relative_to(allowed_root.resolve()):
        raise SourceError(f"{path} is outside the allowed folder")


def safe_member_name(name: str) -> bool:
    pure = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not pure.is_absolute() and ".." not in pure.parts and not (len(name) > 1 and name[1] == ":")


def _zip_items(path: Path, max_member_bytes: int) -> Iterator[Item]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{path.name} is not a readable zip: {exc}") from None
    with archive:
        members = archive.infolist()
        for info in members:  # refuse the whole zip before reading any of it
            if not safe_member_name(info.filename):
                raise SourceError(f"zip member {info.filename!r}: absolute paths and '..' are not allowed")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise SourceError(f"zip member {info.filename!r} is a link")
            if info.file_size > max_member_bytes:
                raise SourceError(f"zip member {info.filename!r} is {info.file_size} bytes, over {max_member_bytes}")
        for info in sorted(members, key=lambda i: i.filename):
            if not info.is_dir() and PurePosixPath(info.filename).suffix.lower() in IMAGE_SUFFIXES:
                yield Item(info.filename, info.filename, str(path))


def _csv_items(path: Path, allowed_root: Path | None) -> Iterator[Item]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise SourceError(f"{path.name}: needs a 'path' column")
        rows = [row["path"].strip() for row in reader if (row.get("path") or "").strip()]
    seen = set()
    for rel in rows:
        file = path.parent / rel
        _check_inside(file, allowed_root)
        if rel not in seen:
            seen.add(rel)
            yield Item(rel, str(file))
