"""Images/s of the product model: torch eager vs in-process ONNX Runtime, batch 1 and 16, in one run.

    python bench/embed.py [--repeats N] [--rounds R] [--model DIR]   # DIR: an exported model folder (default: the served one)

The torch side is the same architecture (backbone, projection, heads, and a voting gallery of the same size
when the graph has one) with untrained weights: the speed, not the answers, is compared.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from common import MODEL_DIR, QUERY_PHOTOS, emit, median_ms

from vision.manifest import ModelManifest
from vision.preprocess import load_image
from vision.runtimes.onnx import OnnxRuntimeEmbedder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--rounds", type=int, default=9, help="interleaved rounds; the medians of the rounds are compared"
    )
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    args = parser.parse_args()

    import torch

    from vision.model import ProductModel

    manifest = ModelManifest.load(args.model)
    photos = [load_image(p.read_bytes(), manifest.input.spec()) for p in QUERY_PHOTOS]
    onnx = OnnxRuntimeEmbedder(args.model)
    onnx.load()
    projected = manifest.embedding_dim if manifest.data_checksum else None  # fine-tuned: a projection; untrained: none
    model = ProductModel(
        manifest.backbone, len(manifest.fine_labels), len(manifest.coarse_labels), embedding_dim=projected
    ).eval()
    if manifest.gallery:  # the same extra work as the graph's voting gallery (random photos: speed, not answers)
        g = manifest.gallery
        model.set_hierarchy(manifest.fine_to_coarse, 0.0)
        model.set_gallery(
            torch.randn(g.photos, model.embedding_dim),
            [i % len(manifest.fine_labels) for i in range(g.photos)],
            g.k,
            g.temperature,
            g.weight,
        )

    result = {
        "bench": "embed",
        "model": f"{manifest.model_id}:{manifest.version}",
        "torch_threads": torch.get_num_threads(),
    }
    for batch in (1, 16):
        pixels = np.stack([photos[i % len(photos)] for i in range(batch)])
        tensor = torch.from_numpy(pixels)
        repeats = args.repeats if batch == 1 else max(3, args.repeats // 3)

        def run_torch():
            with torch.inference_mode():
                model(tensor)

        # Interleaved rounds, so the shared machine's noise hits both runtimes alike.
        torch_rounds, onnx_rounds = [], []
        for _ in range(args.rounds):
            torch_rounds.append(median_ms(run_torch, repeats, warmup=1))
            onnx_rounds.append(median_ms(lambda: onnx.embed(pixels), repeats, warmup=1))
        torch_ms, onnx_ms = statistics.median(torch_rounds), statistics.median(onnx_rounds)
        result[f"batch{batch}"] = {
            "torch_eager_img_s": round(batch / torch_ms * 1e3, 1),
            "onnxruntime_img_s": round(batch / onnx_ms * 1e3, 1),
            "torch_eager_ms_median": round(torch_ms, 2),
            "onnxruntime_ms_median": round(onnx_ms, 2),
            "onnx_over_torch": round(torch_ms / onnx_ms, 2),
        }
    emit(result)


if __name__ == "__main__":
    main()
