"""`seesku quantize`: int8 post-training quantization of an exported graph, gated on val.

NNCF calibrates on training photos only (the activations' ranges; no weights are trained) and writes a QDQ
ONNX graph, which OpenVINO runs on its int8 kernels and ONNX Runtime can still open, so the int8 model is a
model folder like any other. The graph keeps the fp32 graph's contract (uint8 NHWC in, normalised inside).

The gate compares the int8 graph, on the runtime that serves it (OpenVINO), with the fp32 graph on ONNX
Runtime, on the val split: fine and coarse top-1 and photo-to-catalogue R@1 may drop by at most the allowed
points, and the int8 embeddings must keep a mean cosine with the fp32 ones of at least `min_cosine`; when
either fails, nothing is written. The cosine criterion is there because val alone could not see a bad
graph: the shipped model was fit on train+val, so val accuracy hardly moves, while the first int8 graph
(cosine 0.9755 on val) lost 5.8 points fine top-1 on test. Everything after the backbone's pooling (projection, L2
normalisation, heads, voting gallery) stays in fp32: it is about 2 % of the time, and a quantized projection
output divided by the norm of the unquantized one left embeddings with norms from 0.93 to 1.6.
"""

from __future__ import annotations

import hashlib
import logging
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.data import PhotoSet, load_photos
from training.evaluate import _load_pixels, embed_photos
from training.metrics import recall_at_k, topk_accuracy
from vision.manifest import INPUT_NAME, ModelManifest, QuantizationRecord
from vision.runtimes.onnx import OnnxRuntimeEmbedder

POOLING = ("GlobalAveragePool", "ReduceMean")


class GateFailed(RuntimeError):
    """The int8 graph lost more accuracy on val than allowed; nothing was written."""


def calibration_photos(data: Path, count: int, seed: int) -> tuple[PhotoSet, list[Path], str]:
    """`count` training photos, a seeded draw over the train split (never val or test), and their checksum."""
    train = load_photos(data, "train")
    if not len(train):
        raise ValueError(f"{data}: the train split has no photos to calibrate on")
    paths = [p.path for p in train.photos]
    random.Random(seed).shuffle(paths)
    paths = paths[:count]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return train, paths, digest.hexdigest()


def val_figures(embedder, val: PhotoSet) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Fine and coarse top-1 and photo-to-catalogue R@1 of `embedder` on val; also its embeddings and fine
    predictions, for the agreement with the other precision."""
    embedding, fine, coarse = embed_photos(embedder, [p.path for p in val.photos])
    fine_true = np.array([p.fine for p in val.photos])
    coarse_true = np.array([p.coarse for p in val.photos])
    figures = {"fine_top1": topk_accuracy(fine, fine_true, 1), "coarse_top1": topk_accuracy(coarse, coarse_true, 1)}
    if val.iconic:
        iconic = sorted(val.iconic.items())
        gallery = embed_photos(embedder, [path for _, path in iconic])[0]
        figures["catalogue_r1"] = recall_at_k(embedding, fine_true, gallery, np.array([f for f, _ in iconic]), 1)
    return figures, embedding, fine.argmax(axis=1)


def head_nodes(model) -> list[str]:
    """Names of the nodes after the backbone's last pooling (an ONNX graph lists its nodes in topological
    order): what stays in fp32."""
    nodes = list(model.graph.node)
    last = max((i for i, n in enumerate(nodes) if n.op_type in POOLING), default=None)
    if last is None:
        raise ValueError("the graph has no global pooling: cannot tell the backbone from the heads")
    return [n.name for n in nodes[last + 1 :]]


def _quantize_graph(graph: Path, pixels: np.ndarray, out: Path) -> list[str]:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    nncf.set_log_level(logging.WARNING)  # its INFO lines, one per node left in fp32, drowned the gate's log
    model = onnx.load(str(graph))
    ignored = head_nodes(model)
    dataset = nncf.Dataset([{INPUT_NAME: pixels[i : i + 1]} for i in range(len(pixels))])
    # Overflow fix on every layer, not only the first (NNCF's default): CPUs without VNNI (AVX2, AVX-512
    # without VNNI) multiply u8 x s8 pairs with vpmaddubsw, whose int16 sum saturates; 7-bit weights keep it
    # in range. Measured on this AVX2 machine, val embedding cosine with fp32: 0.9755 -> 0.9976, at the
    # same speed. On VNNI/AMX CPUs it costs half a bit of weight precision and nothing else.
    quantized = nncf.quantize(
        model,
        dataset,
        subset_size=len(pixels),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(out))
    return ignored


def _gate(
    fp32: dict[str, float], int8: dict[str, float], max_drop: float, max_r1_drop: float, min_cosine: float
) -> dict:
    allowed = {"fine_top1": max_drop, "coarse_top1": max_drop, "catalogue_r1": max_r1_drop}
    drops = {k: round(fp32[k] - int8[k], 4) for k in allowed if k in fp32}
    return {
        **{f"{k}_drop": v for k, v in drops.items()},
        "max_drop": max_drop,
        "max_r1_drop": max_r1_drop,
        "embedding_cosine_mean": round(int8["embedding_cosine_mean"], 4),
        "min_cosine": min_cosine,
        "passed": all(drops[k] <= allowed[k] + 1e-9 for k in drops) and int8["embedding_cosine_mean"] >= min_cosine,
    }


def _int8_manifest(fp32: ModelManifest, record: QuantizationRecord, graph: Path, command: str) -> ModelManifest:
    version = hashlib.sha256(graph.read_bytes()).hexdigest()[:12]
    return fp32.model_copy(
        update={
            "model_id": f"{fp32.model_id}-int8",
            "version": version,
            "precision": "int8",
            "quantization": record,
            "command": command,
            "onnx_file": "1/model.onnx",
            "metrics": {},  # the parent's parity figures are not this graph's; its own are in quantization.val
        }
    )


def quantize(
    model_dir: Path,
    data: Path,
    out: Path,
    calibration: int = 300,
    seed: int = 0,
    max_drop: float = 0.005,
    max_r1_drop: float = 0.01,
    min_cosine: float = 0.99,
    command: str = "",
    log: Callable[[str], None] = print,
) -> ModelManifest:
    """Quantize `model_dir`'s fp32 graph into the model folder `out`; raises GateFailed when val says no."""
    from vision.runtimes.openvino import OpenVinoEmbedder

    reference = OnnxRuntimeEmbedder(model_dir)
    fp32 = reference.manifest
    if fp32.precision != "fp32":
        raise ValueError(f"{model_dir} is already {fp32.precision}: quantize its fp32 parent")
    train, paths, checksum = calibration_photos(data, calibration, seed)
    val = load_photos(data, "val")
    if not len(val):
        raise ValueError(f"{data}: the val split has no photos for the accuracy gate")
    log(f"calibrating on {len(paths)} of {len(train)} train photos; gate on {len(val)} val photos")
    pixels = _load_pixels(paths, fp32.input.spec())
    fp32_figures, fp32_embedding, fp32_fine = val_figures(reference, val)
    log("fp32 on val: " + ", ".join(f"{k} {v:.4f}" for k, v in fp32_figures.items()))

    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
        staged = Path(scratch) / "model"
        ignored = _quantize_graph(model_dir / fp32.onnx_file, pixels, staged / "1" / "model.onnx")
        fp32.model_copy(update={"onnx_file": "1/model.onnx"}).save(staged)
        int8_figures, embedding, fine = val_figures(OpenVinoEmbedder(staged), val)
        cosine = (embedding * fp32_embedding).sum(axis=1)
        int8_figures |= {
            "fine_agreement": float((fine == fp32_fine).mean()),
            "embedding_cosine_mean": float(cosine.mean()),
            "embedding_cosine_min": float(cosine.min()),
        }
        log("int8 on val: " + ", ".join(f"{k} {v:.4f}" for k, v in int8_figures.items()))
        gate = _gate(fp32_figures, int8_figures, max_drop, max_r1_drop, min_cosine)
        if not gate["passed"]:
            raise GateFailed(f"int8 lost more than allowed on val: {gate}")
        record = QuantizationRecord(
            method="nncf post-training quantization (QDQ ONNX, per-channel 7-bit weights: overflow fix on all layers; fast bias correction)",
            parent=fp32.served_id,
            calibration=f"{train.source}",
            calibration_photos=len(paths),
            calibration_checksum=checksum,
            ignored=ignored,
            val={"fp32": fp32_figures, "int8": int8_figures},
            gate=gate,
        )
        _int8_manifest(fp32, record, staged / "1" / "model.onnx", command).save(staged)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(staged), str(out))  # the folder appears whole, or not at all
    return ModelManifest.load(out)
