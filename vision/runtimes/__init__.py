"""Embedder runtimes: uint8 NHWC pixels in, embeddings and category probabilities out.

Every runtime implements the `Embedder` protocol and is picked by one setting (`SEESKU_INFERENCE`) through
`create_embedder`. None of them imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vision.manifest import ModelManifest


@dataclass(frozen=True)
class EmbedderOutput:
    embedding: np.ndarray  # (N, D) float32, L2-normalised
    fine_probs: np.ndarray  # (N, len(manifest.fine_labels))
    coarse_probs: np.ndarray  # (N, len(manifest.coarse_labels))


class Embedder(Protocol):
    manifest: ModelManifest

    def load(self) -> None:
        """Load the model now (otherwise the first `embed` call does)."""

    @property
    def loaded(self) -> bool: ...

    def embed(self, pixels: np.ndarray) -> EmbedderOutput:
        """pixels: uint8 (N, H, W, 3) as produced by vision.preprocess.load_image."""


def create_embedder(inference: str, model_dir: str | Path, threads: int = 0) -> Embedder:
    if inference == "onnx":
        from vision.runtimes.onnx import OnnxRuntimeEmbedder

        return OnnxRuntimeEmbedder(model_dir, threads=threads)
    raise ValueError(f"unknown inference runtime {inference!r}; supported: 'onnx'")
