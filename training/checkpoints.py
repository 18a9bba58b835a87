"""Checkpoints shared by the training loops: atomic writes, and resuming a run from its `last.pt`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vision.files import atomic_path


def save_atomically(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a kill mid-write never leaves a torn checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def resume_state(last: Path, config: dict, same: Sequence[str], keep: Sequence[str]) -> tuple[dict, dict]:
    """The checkpoint state of an interrupted run and the config to continue it with.

    `same`: config fields that must match the saved run (else it is another run: ValueError). The saved recipe
    wins, except the fields in `keep`, taken from `config` (say, the epoch count to extend a run, and how many
    threads this process may use, which is not part of the recipe)."""
    if not last.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {last}")
    state = torch.load(last, map_location="cpu", weights_only=False)
    saved = state["config"]
    differ = [name for name in same if saved.get(name) != config.get(name)]
    if differ:
        raise ValueError(f"--resume: {last} was trained with a different {'/'.join(differ)}")
    return state, {**saved, **{name: config[name] for name in keep}}
