"""Writing a file so that a crash never leaves half of it: the one temp file + fsync + rename."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` for the caller to write; on success it is flushed to disk and renamed
    over `path`, on failure removed. Readers see the old file or the new one, never a torn one.

    `suffix`: the temporary name's ending, for writers that insist on one (numpy appends `.npy`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and thread: two writers of the same path never share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` (str is written as UTF-8), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
