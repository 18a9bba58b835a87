"""In-process OpenVINO: the same exported graph as ONNX Runtime (fp32, or the int8 QDQ graph of
`seesku quantize`), compiled by OpenVINO's CPU plugin.

Search asks for one photo at a time and wants it back soon: the graph is compiled with the LATENCY hint,
one stream over `threads` cores. Bulk tagging wants images per second: like ONNX Runtime, one
single-threaded compiled model per core, each in a process that decodes its own batches (`bulk_plan`).
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import weakref
from functools import partial
from pathlib import Path

import numpy as np

from vision import detection
from vision.detection import Box, DetectorManifest
from vision.manifest import INPUT_NAME, OUTPUT_NAMES, ModelManifest
from vision.runtimes import BulkPlan, EmbedderOutput

MISSING = (
    "SEESKU_INFERENCE=openvino (the default) needs the OpenVINO runtime, a dependency of seesku: "
    "pip install 'openvino>=2025.3', or run on ONNX Runtime with SEESKU_INFERENCE=onnx"
)


def _openvino():
    try:
        import openvino
    except ImportError as error:
        raise RuntimeError(MISSING) from error
    return openvino


_open_graphs: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_graphs() -> None:
    """Let go of every compiled graph while the interpreter is whole: left to its teardown, OpenVINO objects
    were destroyed in any order, and a test run that had compiled the int8 embedder and detector in one
    process crashed on its way out."""
    for graph in list(_open_graphs):
        graph.close()


class CompiledGraph:
    """An ONNX graph compiled by OpenVINO's CPU plugin on first use, once, however many threads ask; each
    caller runs it on an idle infer request of its own."""

    def __init__(self, path: Path, threads: int = 0, pinned: bool = True):
        _openvino()  # a missing package is a start-up error, not the first search's
        self.path, self.threads, self.pinned = path, threads, pinned
        self._compiled = None
        self._requests: queue.SimpleQueue = queue.SimpleQueue()  # idle infer requests, one per concurrent caller
        self._lock = threading.Lock()
        _open_graphs.add(self)

    @property
    def loaded(self) -> bool:
        return self._compiled is not None

    def load(self) -> None:
        if self._compiled is None:
            with self._lock:
                if self._compiled is None:
                    # f32 where the graph says fp32: on CPUs with bf16 (AVX-512 BF16, AMX) OpenVINO's default
                    # would compute the fp32 graph, and the int8 graph's fp32 parts, in bf16, a precision
                    # nobody gated (sample photos' cosine with ONNX Runtime down to 0.998). The int8 graph
                    # runs as fast either way; the fp32 one at 0.6x.
                    config = {
                        "PERFORMANCE_HINT": "LATENCY",
                        "NUM_STREAMS": 1,
                        "ENABLE_CPU_PINNING": self.pinned,
                        "INFERENCE_PRECISION_HINT": "f32",
                    }
                    if self.threads:
                        config["INFERENCE_NUM_THREADS"] = self.threads
                    self._compiled = _openvino().Core().compile_model(str(self.path), "CPU", config)

    def run(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> list[np.ndarray]:
        self.load()
        # An infer request serves one caller at a time; the service's threads each take an idle one.
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            request.infer(inputs)
            return [request.get_tensor(name).data.copy() for name in outputs]
        finally:
            self._requests.put(request)

    def close(self) -> None:
        with self._lock:
            self._compiled = None
            self._requests = queue.SimpleQueue()


class OpenVinoEmbedder:
    def __init__(self, model_dir: str | Path, threads: int = 0, pinned: bool = True):
        self.model_dir = Path(model_dir)
        self.manifest = ModelManifest.load(self.model_dir)
        self.threads = threads
        self.pinned = pinned
        self._graph = CompiledGraph(self.model_dir / self.manifest.onnx_file, threads, pinned)

    @property
    def loaded(self) -> bool:
        return self._graph.loaded

    def load(self) -> None:
        self._graph.load()

    def health(self) -> str | None:
        return None if self.loaded else "model not loaded"

    def bulk_plan(self) -> BulkPlan:
        # As ONNX Runtime's plan: a multi-threaded run waits at every layer for its slowest thread.
        cores = self.threads or os.cpu_count() or 1
        workers = min(cores, 8)
        # Unpinned: every single-threaded compile pins its thread to the same first core, so two workers
        # shared one core (bench/tagging.py: 2 workers 69 img/s pinned, 139 unpinned; ONNX Runtime 145).
        factory = partial(OpenVinoEmbedder, self.model_dir, threads=max(1, cores // workers), pinned=False)
        return BulkPlan(factory, workers)

    def embed(self, pixels: np.ndarray) -> EmbedderOutput:
        size = self.manifest.input.size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 (N, {size}, {size}, 3), got {pixels.dtype} {pixels.shape}")
        return EmbedderOutput(*self._graph.run({INPUT_NAME: pixels}, OUTPUT_NAMES))

    def close(self) -> None:
        self._graph.close()


class OpenVinoDetector:
    """The product detector's int8 graph (`seesku quantize-detector`) on OpenVINO's int8 kernels."""

    def __init__(self, model_dir: str | Path, threads: int = 0, pinned: bool = True):
        self.model_dir = Path(model_dir)
        self.manifest = DetectorManifest.load(self.model_dir)
        self._graph = CompiledGraph(self.model_dir / self.manifest.onnx_file, threads, pinned)

    def load(self) -> None:
        self._graph.load()

    def detect(self, pixels: np.ndarray, threshold: float | None = None) -> list[list[Box]]:
        size = self.manifest.input.size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 (N, {size}, {size}, 3), got {pixels.dtype} {pixels.shape}")
        scores, boxes = self._graph.run({detection.INPUT_NAME: pixels}, detection.OUTPUT_NAMES)
        return self.manifest.decode(scores, boxes, threshold)

    def close(self) -> None:
        self._graph.close()
