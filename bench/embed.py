"""Images/s of the product model on every CPU runtime, batch 1 and 16, in one run: ONNX Runtime fp32 (the
baseline), OpenVINO fp32, OpenVINO and ONNX Runtime on the int8 graph of `seesku quantize`, and torch eager.

    python bench/embed.py [--repeats N] [--rounds R] [--model DIR] [--int8 DIR] [--no-torch]

The torch side is the same architecture (backbone, projection, heads, and a voting gallery of the same size
when the graph has one) with untrained weights: the speed, not the answers, is compared.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from common import INT8_DIR, MODEL_DIR, QUERY_PHOTOS, emit, median_ms

from vision.manifest import ModelManifest
from vision.preprocess import load_image
from vision.runtimes.onnx import OnnxRuntimeEmbedder
from vision.runtimes.openvino import OpenVinoEmbedder


def torch_runner(manifest: ModelManifest):
    import torch

    from vision.model import ProductModel

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

    def run(pixels: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(pixels))

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--rounds", type=int, default=9, help="interleaved rounds; the medians of the rounds are compared"
    )
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--int8", type=Path, default=INT8_DIR)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    manifest = ModelManifest.load(args.model)
    photos = [load_image(p.read_bytes(), manifest.input.spec()) for p in QUERY_PHOTOS]
    runtimes = {"onnxruntime_fp32": OnnxRuntimeEmbedder(args.model), "openvino_fp32": OpenVinoEmbedder(args.model)}
    if args.int8.is_dir():
        runtimes["openvino_int8"] = OpenVinoEmbedder(args.int8)
        runtimes["onnxruntime_int8"] = OnnxRuntimeEmbedder(args.int8)
    runners = {name: embedder.embed for name, embedder in runtimes.items()}
    for embedder in runtimes.values():
        embedder.load()
    if not args.no_torch:
        runners["torch_eager_fp32"] = torch_runner(manifest)

    result = {"bench": "embed", "model": manifest.served_id, "baseline": "onnxruntime_fp32"}
    if args.int8.is_dir():
        result["int8_model"] = ModelManifest.load(args.int8).served_id
    for batch in (1, 16):
        pixels = np.stack([photos[i % len(photos)] for i in range(batch)])
        repeats = args.repeats if batch == 1 else max(3, args.repeats // 3)
        # Interleaved rounds, so the shared machine's noise hits every runtime alike.
        rounds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                rounds[name].append(median_ms(lambda run=run: run(pixels), repeats, warmup=1))
        ms = {name: statistics.median(times) for name, times in rounds.items()}
        base = ms["onnxruntime_fp32"]
        result[f"batch{batch}"] = {
            name: {"img_s": round(batch / t * 1e3, 1), "ms_median": round(t, 2), "over_baseline": round(base / t, 2)}
            for name, t in ms.items()
        }
    fastest = {b: max(result[b], key=lambda n: result[b][n]["img_s"]) for b in ("batch1", "batch16")}
    result["fastest"] = {b: {"runtime": n, "over_baseline": result[b][n]["over_baseline"]} for b, n in fastest.items()}
    emit(result)


if __name__ == "__main__":
    main()
