"""In-process ONNX Runtime: the embedded default."""

from __future__ import annotations

import os
import threading
from functools import partial
from pathlib import Path

import numpy as np

from vision.manifest import INPUT_NAME, OUTPUT_NAMES, ModelManifest
from vision.runtimes import BulkPlan, EmbedderOutput


class OnnxRuntimeEmbedder:
    def __init__(self, model_dir: str | Path, threads: int = 0, spinning: bool = False):
        self.model_dir = Path(model_dir)
        self.manifest = ModelManifest.load(self.model_dir)
        self.threads = threads
        self.spinning = spinning
        self._session = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def bulk_plan(self) -> BulkPlan:
        # One single-threaded session per core, each in a process that decodes its own batches: a
        # multi-threaded run waits at every operator for its slowest thread. Each session holds about 0.4 GB
        # at batch 32, hence at most 8 workers; more cores than that go to their sessions' threads.
        cores = self.threads or os.cpu_count() or 1
        workers = min(cores, 8)
        return BulkPlan(partial(OnnxRuntimeEmbedder, self.model_dir, threads=max(1, cores // workers), spinning=self.spinning),
                        workers)

    def health(self) -> str | None:
        return None if self.loaded else "model not loaded"

    def load(self) -> None:
        # Lazy and thread-safe: concurrent first requests build one session, not several.
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads  # 0 lets ONNX Runtime use every core
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Idle ORT threads otherwise spin for a while after each run, stealing the cores that the
            # request's decode and index search need next (measured: search 4-17 ms spinning, <1 ms not).
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
            self._session = ort.InferenceSession(
                str(self.model_dir / self.manifest.onnx_file), options, providers=["CPUExecutionProvider"]
            )

    def embed(self, pixels: np.ndarray) -> EmbedderOutput:
        if self._session is None:
            self.load()
        size = self.manifest.input.size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 (N, {size}, {size}, 3), got {pixels.dtype} {pixels.shape}")
        embedding, fine, coarse = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
        return EmbedderOutput(embedding, fine, coarse)
