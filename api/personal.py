"""The shopper model at serving time: the exported recommender run by ONNX Runtime (no torch).

`triton_models/user_recommender/` holds `1/model.onnx` and `manifest.json` (vocabulary of product ids,
sequence length, measured metrics). Given a shopper's merged history it scores every product it knows.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from api.catalog.store import Event

MANIFEST = "manifest.json"
# Channel and event-type ids of the shopper model's inputs (training reads them from here); 0 = padding.
CHANNELS = ["<pad>", "app", "web", "api", "kiosk", "batch"]
EVENT_TYPES = ["<pad>", "view", "cart", "purchase", "search_click"]


def softmax_shares(logits: list[float]) -> list[float]:
    """The shopper model's logits as shares summing to 1 (of the candidates, or of the catalogue)."""
    values = np.asarray(logits, dtype=np.float64)
    shares = np.exp(values - values.max())
    return (shares / shares.sum()).tolist()


class RecommenderManifest(BaseModel):
    model_id: str
    version: str = "1"
    vocabulary: list[str] = Field(description="product ids; the model's item id is the position + 1 (0 = padding)")
    max_len: int
    dim: int
    onnx_file: str = "1/model.onnx"
    metrics: dict[str, float] = {}
    command: str = ""
    data: str = Field("", description="what it was trained on")

    @classmethod
    def load(cls, model_dir: Path) -> "RecommenderManifest":
        return cls.model_validate_json((Path(model_dir) / MANIFEST).read_text())

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / MANIFEST).write_text(self.model_dump_json(indent=2) + "\n")


class PersonalModel:
    def __init__(self, model_dir: Path, threads: int = 1):
        self.model_dir = Path(model_dir)
        self.manifest = RecommenderManifest.load(self.model_dir)
        self.index = {p: i + 1 for i, p in enumerate(self.manifest.vocabulary)}
        self.threads = threads
        self._session = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads  # a tiny graph: one thread, no hand-off cost
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._session = ort.InferenceSession(str(self.model_dir / self.manifest.onnx_file), options,
                                                     providers=["CPUExecutionProvider"])

    def encode(self, history: list[Event]) -> dict[str, np.ndarray] | None:
        known = [e for e in history if e.product_id in self.index][-self.manifest.max_len:]
        if not known:
            return None
        return {
            "items": np.array([[self.index[e.product_id] for e in known]], dtype=np.int64),
            "channels": np.array([[CHANNELS.index(e.channel) if e.channel in CHANNELS else 0 for e in known]], dtype=np.int64),
            "types": np.array([[EVENT_TYPES.index(e.type) if e.type in EVENT_TYPES else 0 for e in known]], dtype=np.int64),
        }

    def scores(self, history: list[Event]) -> dict[str, float]:
        """product_id -> the model's logit for it being the shopper's next product; {} without usable history."""
        inputs = self.encode(history)
        if inputs is None:
            return {}
        if self._session is None:
            self.load()
        _, scores = self._session.run(["user_vector", "scores"], inputs)
        return dict(zip(self.manifest.vocabulary, scores[0, 1:].tolist()))
