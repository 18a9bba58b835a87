"""The shopper model's contract, shared by training and serving (neither imports the other for it).

- `RecommenderManifest`: what an exported shopper model is (vocabulary of product ids, sequence length).
- `CHANNELS`, `EVENT_TYPES`: the ids the model reads for an event's channel and type; 0 is padding/unknown.
- `encode()`: a shopper's history as the graph's three inputs.
- `read_events_csv()`: the events CSV, read one way for the service's import and the trainer alike: a
  timestamp without an offset is UTC.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from vision.files import atomic_write

MANIFEST_NAME = "manifest.json"
CHANNELS = ["<pad>", "app", "web", "api", "kiosk", "batch"]
EVENT_TYPES = ["<pad>", "view", "cart", "purchase", "search_click"]
INPUT_NAMES = ("items", "channels", "types")
OUTPUT_NAMES = ("user_vector", "scores")


@dataclass
class Event:
    """One thing a shopper did, on any channel."""

    user_id: str
    product_id: str
    type: str
    channel: str
    ts: float  # Unix time
    event_id: str | None = None


class RecommenderManifest(BaseModel):
    model_id: str
    version: str = "1"  # the graph's checksum since exports carry one; "1" in the first shipped model
    vocabulary: list[str] = Field(description="product ids; the model's item id is the position + 1 (0 = padding)")
    max_len: int
    dim: int
    onnx_file: str = "1/model.onnx"
    metrics: dict[str, float] = {}
    command: str = ""
    data: str = Field("", description="what it was trained on")

    @property
    def served_id(self) -> str:
        """The id every answer names it by: model id and version."""
        return f"{self.model_id}:{self.version}"

    @classmethod
    def load(cls, model_dir: str | Path) -> RecommenderManifest:
        return cls.model_validate_json((Path(model_dir) / MANIFEST_NAME).read_text())

    def save(self, model_dir: str | Path) -> None:
        atomic_write(Path(model_dir) / MANIFEST_NAME, self.model_dump_json(indent=2) + "\n")


def channel_id(channel: str) -> int:
    return CHANNELS.index(channel) if channel in CHANNELS else 0


def event_type_id(kind: str) -> int:
    return EVENT_TYPES.index(kind) if kind in EVENT_TYPES else 0


def encode(history: Sequence[Event], index: dict[str, int], max_len: int) -> dict[str, np.ndarray] | None:
    """The newest `max_len` events of products the model knows (`index`: product id -> item id) as a batch of
    one; None when none is known."""
    known = [e for e in history if e.product_id in index][-max_len:]
    if not known:
        return None
    return {
        "items": np.array([[index[e.product_id] for e in known]], dtype=np.int64),
        "channels": np.array([[channel_id(e.channel) for e in known]], dtype=np.int64),
        "types": np.array([[event_type_id(e.type) for e in known]], dtype=np.int64),
    }


def unix_time(ts: datetime) -> float:
    """Unix time of a timestamp; one without an offset is UTC (never the reading machine's local time)."""
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def parse_timestamp(text: str) -> float:
    """ISO 8601 to Unix time, by the rule of `unix_time`."""
    return unix_time(datetime.fromisoformat(text))


def read_events_csv(path: str | Path) -> list[Event]:
    """Events of a CSV (`user_id,product_id,type,channel,timestamp[,event_id]`; '#' lines are comments),
    each user's in time order."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    events = [
        Event(
            r["user_id"],
            r["product_id"],
            r["type"],
            r["channel"],
            parse_timestamp(r["timestamp"]),
            r.get("event_id") or None,
        )
        for r in rows
    ]
    events.sort(key=lambda e: (e.user_id, e.ts))
    return events
