"""Choose the training-photo vote of `seesku export-onnx --gallery-weight/--gallery-k/--gallery-temperature`
on the validation split, from an exported model *without* a gallery (its heads and embeddings):

    python -m training.select_gallery --model runs/grocery-lite2/product_embedder --data ../shared/data/grocery_store

Prints JSON: val fine and coarse top-1 of the heads alone and of every (k, temperature, weight) of the grid,
best first (by fine + coarse). The vote is computed here in numpy exactly as `ProductModel.set_gallery` bakes
it into the graph; the chosen setting is then exported and measured on the served graph with
`seesku eval vision`. Only val photos are scored and only train photos vote: test stays unseen.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from training.data import load_photos
from training.evaluate import _label_map, embed_photos
from vision.runtimes.onnx import OnnxRuntimeEmbedder

KS = (1, 5, 10, 20)
TEMPERATURES = (0.05, 0.1)
WEIGHTS = (0.25, 0.5, 0.75)


def vote(similarity: np.ndarray, labels: np.ndarray, num_labels: int, k: int, temperature: float) -> np.ndarray:
    """Softmax of (cosine / temperature) over each row's k most similar reference photos, summed per label."""
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    top = np.take_along_axis(similarity, nearest, axis=1) / temperature
    share = np.exp(top - top.max(axis=1, keepdims=True))
    share /= share.sum(axis=1, keepdims=True)
    out = np.zeros((len(similarity), num_labels))
    np.add.at(out, (np.arange(len(similarity))[:, None], labels[nearest]), share)
    return out


def grid(model_dir: Path, data: Path) -> dict:
    embedder = OnnxRuntimeEmbedder(model_dir)
    manifest = embedder.manifest
    val, train = load_photos(data, "val"), load_photos(data, "train")
    fine_map, coarse_map = (
        _label_map(val.fine_labels, manifest.fine_labels),
        _label_map(val.coarse_labels, manifest.coarse_labels),
    )
    fine_true = fine_map[[p.fine for p in val.photos]]
    coarse_true = coarse_map[[p.coarse for p in val.photos]]
    embedding, fine, coarse = embed_photos(embedder, [p.path for p in val.photos])
    reference = embed_photos(embedder, [p.path for p in train.photos])[0]
    reference_labels = _label_map(train.fine_labels, manifest.fine_labels)[[p.fine for p in train.photos]]
    to_coarse = np.zeros((len(manifest.fine_labels), len(manifest.coarse_labels)))
    to_coarse[np.arange(len(manifest.fine_to_coarse)), manifest.fine_to_coarse] = 1
    similarity = embedding @ reference.T

    def accuracy(probs: np.ndarray, truth: np.ndarray) -> float:
        return round(float((probs.argmax(axis=1) == truth).mean()), 4)

    rows = []
    for k, temperature in itertools.product(KS, TEMPERATURES):
        v = vote(similarity, reference_labels, len(manifest.fine_labels), k, temperature)
        for w in WEIGHTS:
            rows.append(
                {
                    "k": k,
                    "temperature": temperature,
                    "weight": w,
                    "val_fine_top1": accuracy((1 - w) * fine + w * v, fine_true),
                    "val_coarse_top1": accuracy((1 - w) * coarse + w * v @ to_coarse, coarse_true),
                }
            )
    rows.sort(key=lambda r: -(r["val_fine_top1"] + r["val_coarse_top1"]))  # stable: ties keep the grid order
    return {
        "model": str(model_dir),
        "val_photos": len(val),
        "reference_photos": len(train),
        "heads_alone": {"val_fine_top1": accuracy(fine, fine_true), "val_coarse_top1": accuracy(coarse, coarse_true)},
        "grid": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported model folder without a gallery")
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(grid(args.model, args.data), indent=2))


if __name__ == "__main__":
    main()
