"""Model runtimes: the embedder (uint8 NHWC pixels in, embeddings and category probabilities out) and the
shopper scorer (a shopper's history in, a score per product out).

Every runtime implements the `Embedder` or `ShopperScorer` protocol and is picked by one setting
(`SEESKU_INFERENCE`: `openvino`, the default, or `onnx` in-process, or `triton://HOST:PORT`) through `create_embedder` and
`create_shopper_scorer`, the way one setting maps to a session class. None of them imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vision.detection import Box, DetectorManifest
from vision.manifest import ModelManifest
from vision.recommender import Event, RecommenderManifest


@dataclass(frozen=True)
class EmbedderOutput:
    embedding: np.ndarray  # (N, D) float32, L2-normalised
    fine_probs: np.ndarray  # (N, len(manifest.fine_labels))
    coarse_probs: np.ndarray  # (N, len(manifest.coarse_labels))


@dataclass(frozen=True)
class BulkPlan:
    """How bulk work (tagging) runs an embedder: `workers` processes at once, each decoding its own batches
    and embedding them on the embedder `factory` builds in that process.

    A process that decodes and then embeds keeps one core busy with one task at a time; a decoder process
    beside model threads in another made three busy tasks share two cores, and every switch between them
    cost cache (bench/tagging.py).
    """

    factory: Callable[[], Embedder]  # picklable, called in the worker process
    workers: int
    fork_safe: bool = True  # False: the runtime's client library must start afresh in a spawned process (gRPC)


SUPPORTED = "'onnx', 'openvino', 'triton://HOST:PORT'"


class EmbedderUnavailable(RuntimeError):
    """The runtime cannot answer now (a remote inference server down or too slow); worth retrying later."""


class Embedder(Protocol):
    manifest: ModelManifest

    def load(self) -> None:
        """Load the model now (otherwise the first `embed` call does)."""

    @property
    def loaded(self) -> bool: ...

    def health(self) -> str | None:
        """None when the embedder can answer, else why not (for /readyz)."""

    def embed(self, pixels: np.ndarray) -> EmbedderOutput:
        """pixels: uint8 (N, H, W, 3) as produced by vision.preprocess.load_image."""

    def bulk_plan(self) -> BulkPlan:
        """How bulk work (tagging) runs this model: see `BulkPlan`."""

    def close(self) -> None:
        """Let go of the session or the connection; the embedder is not used afterwards."""


class ShopperScorer(Protocol):
    manifest: RecommenderManifest

    def load(self) -> None:
        """Load the model now (otherwise the first `scores` call does)."""

    def scores(self, history: Sequence[Event]) -> dict[str, float]:
        """product_id -> the model's logit for it being the shopper's next product; {} without usable history."""

    def close(self) -> None: ...


class Detector(Protocol):
    manifest: DetectorManifest

    def load(self) -> None: ...

    def detect(self, pixels: np.ndarray, threshold: float | None = None) -> list[list[Box]]:
        """pixels: uint8 (N, S, S, 3) as vision.detection.detector_input makes them -> each image's products,
        best first (the manifest's score threshold unless `threshold` says another, suppression and cap
        applied)."""

    def close(self) -> None: ...


def fastest_runtime(model_dir: str | Path) -> str:
    """The in-process runtime for this model folder where nothing else is said (`seesku eval vision`, Triton's
    python backend): OpenVINO for an int8 graph, which ONNX Runtime runs at a third of fp32's speed; ONNX
    Runtime for fp32, the reference every fp32 figure was measured on (OpenVINO runs fp32 1.07-1.15x as fast
    on an AVX2 CPU, 1.46-1.73x on an AVX-512 one, where it computes in bf16: bench/embed.py)."""
    return "openvino" if ModelManifest.load(model_dir).precision == "int8" else "onnx"


def create_embedder(
    inference: str,
    model_dir: str | Path,
    threads: int = 0,
    triton_model: str = "product_embedder",
    timeout_s: float = 5.0,
    retries: int = 2,
) -> Embedder:
    """inference: 'onnx' or 'openvino' (in-process) or 'triton://host:grpc_port'; model_dir holds the manifest
    (and, in-process, the graph). threads applies in-process; the rest to Triton."""
    if inference == "onnx":
        from vision.runtimes.onnx import OnnxRuntimeEmbedder

        return OnnxRuntimeEmbedder(model_dir, threads=threads)
    if inference == "openvino":
        from vision.runtimes.openvino import OpenVinoEmbedder

        return OpenVinoEmbedder(model_dir, threads=threads)
    if inference.startswith("triton://"):
        from vision.runtimes.triton import TritonEmbedder

        return TritonEmbedder(inference, model_dir, triton_model, timeout_s=timeout_s, retries=retries)
    raise ValueError(f"unknown inference runtime {inference!r}; supported: {SUPPORTED}")


def create_detector(
    inference: str, model_dir: str | Path, threads: int = 0, timeout_s: float = 5.0, retries: int = 2
) -> Detector:
    """The product detector of `model_dir` on the runtime `inference` names (as `create_embedder`). Under
    'openvino' an int8 graph runs on OpenVINO and an fp32 one on ONNX Runtime (`fastest_runtime`)."""
    if inference == "openvino" and DetectorManifest.load(model_dir).precision == "int8":
        from vision.runtimes.openvino import OpenVinoDetector

        return OpenVinoDetector(model_dir, threads=threads)
    if inference in ("onnx", "openvino"):
        from vision.runtimes.onnx import OnnxDetector

        return OnnxDetector(model_dir, threads=threads)
    if inference.startswith("triton://"):
        from vision.runtimes.triton import TritonDetector

        return TritonDetector(inference, model_dir, timeout_s=timeout_s, retries=retries)
    raise ValueError(f"unknown inference runtime {inference!r}; supported: {SUPPORTED}")


def create_shopper_scorer(
    inference: str, model_dir: str | Path, timeout_s: float = 5.0, retries: int = 2
) -> ShopperScorer:
    """The shopper model on the runtime `inference` names (as `create_embedder`); model_dir holds its manifest
    (and, in-process, the graph). Under 'openvino' it runs on ONNX Runtime: a graph this small gains nothing."""
    if inference in ("onnx", "openvino"):
        from vision.runtimes.onnx import OnnxShopperScorer

        return OnnxShopperScorer(model_dir)
    if inference.startswith("triton://"):
        from vision.runtimes.triton import TritonShopperScorer

        return TritonShopperScorer(inference, model_dir, timeout_s=timeout_s, retries=retries)
    raise ValueError(f"unknown inference runtime {inference!r}; supported: {SUPPORTED}")
