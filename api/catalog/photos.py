"""Photo files: the original bytes of every catalogue photo (kept for re-embedding and for serving them)
and the thumbnail cache beside them."""

from __future__ import annotations

from pathlib import Path

from vision.files import atomic_write
from vision.preprocess import Limits, thumbnail


class PhotoFiles:
    """Original photo bytes, content-addressed under `root` (data_dir/images): one file per distinct photo,
    however many products use it."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def write(self, sha256: str, data: bytes) -> None:
        path = self.path(sha256)
        if not path.exists():
            atomic_write(path, data)

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


class Thumbnails:
    """Small upright JPEGs of stored photos, made once per photo and size (data_dir/thumbs)."""

    def __init__(self, root: Path, files: PhotoFiles, limits: Limits):
        self.root, self.files, self.limits = root, files, limits

    def get(self, sha256: str, size: int = 256) -> bytes:
        cache = self.root / f"{sha256}-{size}.jpg"
        if cache.exists():
            return cache.read_bytes()
        data = thumbnail(self.files.read(sha256), size, self.limits)
        atomic_write(cache, data)
        return data
