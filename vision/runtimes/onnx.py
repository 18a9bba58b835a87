"""In-process ONNX Runtime: the embedded default, for the embedder and the shopper model."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from vision import detection
from vision.detection import Box, DetectorManifest
from vision.manifest import INPUT_NAME, OUTPUT_NAMES, ModelManifest
from vision.recommender import OUTPUT_NAMES as SHOPPER_OUTPUTS
from vision.recommender import Event, RecommenderManifest, encode
from vision.runtimes import BulkPlan, EmbedderOutput


def onnx_session(path: str | Path, threads: int = 0, spinning: bool = False):
    """The one way seesku opens an ONNX graph: CPU, every graph optimisation, `threads` intra-op threads
    (0: every core) and, unless `spinning`, no busy-waiting threads between runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads otherwise spin for a while after each run, stealing the cores that the request's
    # decode and index search need next (measured: search 4-17 ms spinning, <1 ms not).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _LazySession:
    """A session opened on first use, once, however many threads ask at the same time."""

    def __init__(self, path: Path, threads: int, spinning: bool = False):
        self._path, self._threads, self._spinning = path, threads, spinning
        self._session = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def get(self):
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = onnx_session(self._path, self._threads, self._spinning)
        return self._session

    def close(self) -> None:
        with self._lock:
            self._session = None


class OnnxRuntimeEmbedder:
    def __init__(self, model_dir: str | Path, threads: int = 0, spinning: bool = False):
        self.model_dir = Path(model_dir)
        self.manifest = ModelManifest.load(self.model_dir)
        self.threads = threads
        self.spinning = spinning
        self._session = _LazySession(self.model_dir / self.manifest.onnx_file, threads, spinning)

    @property
    def loaded(self) -> bool:
        return self._session.loaded

    def bulk_plan(self) -> BulkPlan:
        # One single-threaded session per core, each in a process that decodes its own batches: a
        # multi-threaded run waits at every operator for its slowest thread. Each session holds about 0.4 GB
        # at batch 32, hence at most 8 workers; more cores than that go to their sessions' threads.
        cores = self.threads or os.cpu_count() or 1
        workers = min(cores, 8)
        factory = partial(OnnxRuntimeEmbedder, self.model_dir, threads=max(1, cores // workers), spinning=self.spinning)
        return BulkPlan(factory, workers)

    def health(self) -> str | None:
        return None if self.loaded else "model not loaded"

    def load(self) -> None:
        self._session.get()

    def embed(self, pixels: np.ndarray) -> EmbedderOutput:
        size = self.manifest.input.size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 (N, {size}, {size}, 3), got {pixels.dtype} {pixels.shape}")
        embedding, fine, coarse = self._session.get().run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
        return EmbedderOutput(embedding, fine, coarse)

    def close(self) -> None:
        self._session.close()


class OnnxDetector:
    """The exported product detector (`triton_models/product_detector/`) in-process."""

    def __init__(self, model_dir: str | Path, threads: int = 0):
        self.model_dir = Path(model_dir)
        self.manifest = DetectorManifest.load(self.model_dir)
        self._session = _LazySession(self.model_dir / self.manifest.onnx_file, threads)

    def load(self) -> None:
        self._session.get()

    def detect(self, pixels: np.ndarray, threshold: float | None = None) -> list[list[Box]]:
        size = self.manifest.input.size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 (N, {size}, {size}, 3), got {pixels.dtype} {pixels.shape}")
        scores, boxes = self._session.get().run(list(detection.OUTPUT_NAMES), {detection.INPUT_NAME: pixels})
        return self.manifest.decode(scores, boxes, threshold)

    def close(self) -> None:
        self._session.close()


class OnnxShopperScorer:
    """The exported shopper model (`triton_models/user_recommender/`) in-process."""

    def __init__(self, model_dir: str | Path, threads: int = 1):
        self.model_dir = Path(model_dir)
        self.manifest = RecommenderManifest.load(self.model_dir)
        self.index = {p: i + 1 for i, p in enumerate(self.manifest.vocabulary)}
        # A tiny graph: one thread, no hand-off cost.
        self._session = _LazySession(self.model_dir / self.manifest.onnx_file, threads)

    def load(self) -> None:
        self._session.get()

    def scores(self, history: Sequence[Event]) -> dict[str, float]:
        inputs = encode(history, self.index, self.manifest.max_len)
        if inputs is None:
            return {}
        _, scores = self._session.get().run(list(SHOPPER_OUTPUTS), inputs)
        return dict(zip(self.manifest.vocabulary, scores[0, 1:].tolist()))

    def close(self) -> None:
        self._session.close()
