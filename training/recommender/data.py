"""Event sequences for the recommender: the standard sequence file, or the service's own stored events.

Sequence file: one user a line, `user item item ...` in time order (the S3-Rec preprocessing of Amazon
Beauty). Items are numbered from 1; 0 is padding. Leave-one-out: the last item is the test target, the
second to last the validation target, the rest trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vision.recommender import Event, channel_id, event_type_id, read_events_csv


@dataclass
class Sequences:
    """Per-user item sequences (1-based item ids), with optional per-event channel and type ids."""

    items: list[np.ndarray]
    num_items: int
    channels: list[np.ndarray] | None = None
    types: list[np.ndarray] | None = None
    vocabulary: list[str] = field(default_factory=list)  # item id - 1 -> product id (service events)

    def __len__(self) -> int:
        return len(self.items)

    def side(self, which: str, user: int) -> np.ndarray:
        values = getattr(self, which)
        return values[user] if values is not None else np.zeros_like(self.items[user])


def read_sequence_file(path: str | Path) -> Sequences:
    items = []
    num_items = 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            seq = np.array([int(x) for x in parts[1:]], dtype=np.int64)
            if seq.min() < 1:
                raise ValueError(f"{path}: item ids must start at 1 (0 is padding)")
            num_items = max(num_items, int(seq.max()))
            items.append(seq)
    if not items:
        raise ValueError(f"{path}: no sequences")
    return Sequences(items, num_items)


def read_events_file(path: str | Path) -> Sequences:
    """An events CSV (`user_id,product_id,type,channel,timestamp`, vision.recommender's reader) as sequences."""
    return from_events(read_events_csv(path))


def from_events(events: Sequence[Event], vocabulary: list[str] | None = None) -> Sequences:
    """Events, each user's in time order -> sequences with channel and type ids (the served model's ids)."""
    vocabulary = list(vocabulary or sorted({e.product_id for e in events}))
    index = {p: i + 1 for i, p in enumerate(vocabulary)}
    per_user: dict[str, tuple[list, list, list]] = {}
    for e in events:
        if e.product_id not in index:
            continue
        seq = per_user.setdefault(e.user_id, ([], [], []))
        seq[0].append(index[e.product_id])
        seq[1].append(channel_id(e.channel))
        seq[2].append(event_type_id(e.type))
    users = list(per_user.values())
    return Sequences(
        [np.array(u[0], np.int64) for u in users],
        len(vocabulary),
        [np.array(u[1], np.int64) for u in users],
        [np.array(u[2], np.int64) for u in users],
        vocabulary,
    )


def left_pad(values: np.ndarray, length: int) -> np.ndarray:
    """The last `length` values, left-padded with 0 (the newest event is always at the end)."""
    values = values[-length:]
    out = np.zeros(length, dtype=np.int64)
    if len(values):
        out[-len(values) :] = values
    return out
