"""Export the product model to ONNX and write its manifest.

The untrained model gets prototype heads built from a catalogue (see vision.model). The export is
checked against torch on real photos (embedding cosine >= 0.9999) before anything is written, and the
graph is written next to its manifest in the Triton model repository, atomically. What the model scores on
labelled photos is measured by training/, not here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vision.backbones import REGISTRY
from vision.catalog_csv import read_catalog_csv
from vision.files import atomic_path
from vision.manifest import INPUT_NAME, OUTPUT_NAMES, InputConfig, ModelManifest
from vision.model import ProductModel
from vision.preprocess import InputSpec, load_image
from vision.runtimes.onnx import onnx_session

PARITY_MIN_COSINE = 0.9999
OPSET = 18


@dataclass
class CatalogPhoto:
    path: Path
    fine: str
    coarse: str


def read_catalog_photos(catalog_csv: Path) -> list[CatalogPhoto]:
    """Photos and categories of a catalogue CSV (the `seesku catalog import` format)."""
    return [
        CatalogPhoto(catalog_csv.parent / rel, row.fine_category, row.coarse_category)
        for row in read_catalog_csv(catalog_csv)
        for rel in row.images
    ]


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def embed_paths(model: ProductModel, paths: Sequence[Path], spec: InputSpec, batch: int = 16) -> torch.Tensor:
    out = []
    for chunk in _batches(list(paths), batch):
        pixels = torch.from_numpy(np.stack([load_image(Path(p).read_bytes(), spec) for p in chunk]))
        out.append(model(pixels)[0])
    return torch.cat(out)


def build_prototype_model(
    backbone: str, photos: list[CatalogPhoto], scale: float
) -> tuple[ProductModel, list[str], list[str], list[int]]:
    """The pretrained backbone with heads whose class weights are mean catalogue embeddings."""
    fine_labels = list(dict.fromkeys(p.fine for p in photos))
    coarse_labels = list(dict.fromkeys(p.coarse for p in photos))
    fine_to_coarse_map = {}
    for p in photos:
        if fine_to_coarse_map.setdefault(p.fine, p.coarse) != p.coarse:
            raise ValueError(f"fine category {p.fine!r} appears under two coarse categories")
    model = ProductModel(backbone, len(fine_labels), len(coarse_labels), head_scale=scale).eval()
    spec = InputSpec(REGISTRY[backbone].input_size, REGISTRY[backbone].crop_pct)
    emb = embed_paths(model, [p.path for p in photos], spec)
    fine_idx = torch.tensor([fine_labels.index(p.fine) for p in photos])
    coarse_idx = torch.tensor([coarse_labels.index(p.coarse) for p in photos])
    model.fine_head.set_prototypes(_class_means(emb, fine_idx, len(fine_labels)))
    model.coarse_head.set_prototypes(_class_means(emb, coarse_idx, len(coarse_labels)))
    fine_to_coarse = [coarse_labels.index(fine_to_coarse_map[f]) for f in fine_labels]
    return model, fine_labels, coarse_labels, fine_to_coarse


def _class_means(emb: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    sums = torch.zeros(n, emb.shape[1]).index_add_(0, idx, emb)
    return sums / torch.bincount(idx, minlength=n).clamp(min=1).unsqueeze(1)


def export_onnx(model: ProductModel, path: Path) -> None:
    export_uint8_graph(model, path, model.input_size, OUTPUT_NAMES, max_batch=1024)


def export_uint8_graph(model: torch.nn.Module, path: Path, size: int, outputs: Sequence[str], max_batch: int) -> None:
    """`model` as an ONNX graph of the house's contract: uint8 NHWC `pixels` (size x size) in, any batch up to
    `max_batch`, the named outputs out, one file (no external data)."""
    model.eval()
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(outputs),
        dynamic_shapes={INPUT_NAME: {0: batch}},
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
    )


def parity(model: ProductModel, onnx_path: Path, pixels: np.ndarray) -> dict[str, float]:
    """Compare ONNX Runtime against torch on the same uint8 batch."""
    session = onnx_session(onnx_path)
    ort_emb, ort_fine, ort_coarse = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
    with torch.no_grad():
        t_emb, t_fine, t_coarse = (t.numpy() for t in model(torch.from_numpy(pixels)))
    cos = (ort_emb * t_emb).sum(1) / (np.linalg.norm(ort_emb, axis=1) * np.linalg.norm(t_emb, axis=1))
    return {
        "parity_min_cosine": float(cos.min()),
        "parity_max_abs_fine_prob": float(np.abs(ort_fine - t_fine).max()),
        "parity_max_abs_coarse_prob": float(np.abs(ort_coarse - t_coarse).max()),
        "parity_samples": float(len(pixels)),
    }


def export_pretrained(
    catalog_csv: Path,
    out_dir: Path,
    backbone: str = "tf_efficientnet_lite0",
    scale: float = 20.0,
    command: str = "",
    log: Callable[[str], None] = print,
) -> ModelManifest:
    """Build, export, check and write `out_dir/1/model.onnx` and `out_dir/manifest.json`."""
    photos = read_catalog_photos(catalog_csv)
    if not photos:
        raise ValueError(f"{catalog_csv} lists no photos")
    log(f"embedding {len(photos)} catalogue photos for the prototype heads")
    model, fine_labels, coarse_labels, fine_to_coarse = build_prototype_model(backbone, photos, scale)
    cfg = REGISTRY[backbone]
    manifest = ModelManifest(
        model_id=f"seesku-{backbone.replace('tf_', '').replace('_', '-')}-prototype",
        version="",  # set by write_model: the graph's checksum
        backbone=backbone,
        source_weights=f"{cfg.source} (ImageNet-1k), no fine-tuning",
        heads=(
            f"prototype cosine heads (scale {scale:g}): class weights are the mean embeddings of the "
            f"catalogue photos in {catalog_csv.name}"
        ),
        input=InputConfig(size=cfg.input_size, crop_pct=cfg.crop_pct, mean=cfg.mean, std=cfg.std),
        embedding_dim=model.embedding_dim,
        fine_labels=fine_labels,
        coarse_labels=coarse_labels,
        fine_to_coarse=fine_to_coarse,
        command=command,
    )
    return write_model(model, manifest, out_dir, [p.path for p in photos[:32]], log)


def write_model(
    model: ProductModel,
    manifest: ModelManifest,
    out_dir: Path,
    check_photos: Sequence[Path],
    log: Callable[[str], None] = print,
) -> ModelManifest:
    """Export `model`, check parity on `check_photos`, then write graph + manifest into `out_dir` atomically.

    The parity figures are added to the manifest's metrics; nothing is replaced unless the parity check passes.
    """
    spec = manifest.input.spec()
    graph = out_dir / "1" / "model.onnx"
    with atomic_path(graph, suffix=".onnx") as tmp:
        log("exporting to ONNX")
        export_onnx(model, tmp)
        pixels = np.stack([load_image(Path(p).read_bytes(), spec) for p in check_photos])
        metrics = parity(model, tmp, pixels)
        log(f"parity: {metrics}")
        if metrics["parity_min_cosine"] < PARITY_MIN_COSINE:
            raise RuntimeError(f"ONNX/torch embedding cosine {metrics['parity_min_cosine']:.6f} < {PARITY_MIN_COSINE}")
    # The version is the graph's checksum: any re-export that changes what the model computes (weights,
    # input size, heads) gets a new one, so catalogues and tagging jobs re-embed instead of mixing vectors.
    version = hashlib.sha256(graph.read_bytes()).hexdigest()[:12]
    manifest = manifest.model_copy(update={"version": version, "metrics": {**manifest.metrics, **metrics}})
    manifest.save(out_dir)
    return manifest
