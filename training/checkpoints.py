"""Checkpoint writing shared by the training loops."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_atomically(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill mid-write never leaves a torn checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
