"""`seesku quantize-detector`: the product detector's int8 graph, gated on scenes of val photos.

As `seesku quantize` does for the embedder (training/quantize.py): NNCF calibrates on training data only
(scenes composed from the train split, with seeds no training epoch used), with 7-bit weights against the
saturation of CPUs without VNNI, and writes a QDQ ONNX graph that OpenVINO runs on its int8 kernels. Its
outputs (scores, boxes) keep their fp32 contract. The gate compares it, on OpenVINO, with the fp32 graph on
ONNX Runtime over scenes of val photos: AP@0.5 and recall at the served threshold may drop at most
`max_drop`, false objects per photo may rise at most `max_false_rise`, and the boxes both find must overlap
with a mean IoU of at least `min_iou`; failing, nothing is written.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.detection.composites import TrainingScenes, evaluation_scenes
from training.detection.metrics import average_precision, recall_and_false
from training.detection.train import load_sources
from vision.detection import INPUT_NAME, Box, DetectorManifest, detector_input, iou_matrix
from vision.detector import STAGES
from vision.runtimes.onnx import OnnxDetector

CALIBRATION_SEED = 90_000_000  # scene seeds far past any training epoch's
GATE_SEED = 21
HEAD_CONVS = len(STAGES) + 1 + 2 + 2  # vision/detector.py: laterals, smooth, tower, score and geometry


class GateFailed(RuntimeError):
    """The int8 detector lost more on val scenes than allowed; nothing was written."""


def head_nodes(model) -> list[str]:
    """The nodes from the head's first convolution on (the graph lists its nodes in the order they run), kept in
    fp32: quantized, the box geometry moved enough (mean IoU 0.79 with fp32's boxes on val scenes) to loosen
    the crops, though AP@0.5 did not change."""
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if len(convs) <= HEAD_CONVS:
        raise ValueError("the detector graph has no trunk before its head")
    return [n.name for n in nodes[convs[-HEAD_CONVS] :]]


def _figures(found_low: list[list[Box]], truth: list[np.ndarray], threshold: float) -> dict[str, float]:
    return {"ap50": average_precision(found_low, truth, 0.5), **recall_and_false(found_low, truth, threshold)}


def _box_agreement(a: list[list[Box]], b: list[list[Box]]) -> float:
    """Mean best IoU of each fp32 box with the int8 boxes of the same photo (0 for a box int8 misses)."""
    best = []
    for fp32, int8 in zip(a, b):
        if fp32:
            overlaps = iou_matrix(np.stack([x.as_array() for x in fp32]), np.stack([x.as_array() for x in int8]))
            best += list(overlaps.max(axis=1)) if int8 else [0.0] * len(fp32)
    return float(np.mean(best)) if best else 1.0


def _quantize(graph_path: Path, pixels: list[np.ndarray]):
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    nncf.set_log_level(logging.WARNING)
    graph = onnx.load(str(graph_path))
    return nncf.quantize(
        graph,
        nncf.Dataset([{INPUT_NAME: p} for p in pixels]),
        subset_size=len(pixels),
        ignored_scope=nncf.IgnoredScope(names=head_nodes(graph), validate=False),
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
    )


def _gate(reference, int8, pixels: list[np.ndarray], truth: list[np.ndarray], limits: dict) -> tuple[dict, dict]:
    """Both precisions' figures on the gate's scenes, and the gate (with `passed`)."""
    threshold = reference.manifest.score_threshold
    low = [[d.detect(p, threshold=0.02)[0] for p in pixels] for d in (reference, int8)]
    figures = {name: _figures(found, truth, threshold) for name, found in zip(("fp32", "int8"), low)}
    served = [[[b for b in boxes if b.score >= threshold] for boxes in found] for found in low]
    gate = {
        "ap50_drop": figures["fp32"]["ap50"] - figures["int8"]["ap50"],
        "recall_drop": figures["fp32"]["recall"] - figures["int8"]["recall"],
        "false_rise": figures["int8"]["false_per_photo"] - figures["fp32"]["false_per_photo"],
        "box_iou_mean": _box_agreement(*served),
        **limits,
    }
    gate["passed"] = (
        max(gate["ap50_drop"], gate["recall_drop"]) <= limits["max_drop"] + 1e-9
        and gate["false_rise"] <= limits["max_false_rise"] + 1e-9
        and gate["box_iou_mean"] >= limits["min_iou"]
    )
    return figures, gate


def quantize_detector(
    model_dir: Path,
    data: Path,
    out: Path,
    calibration: int = 300,
    scenes: int = 200,
    max_drop: float = 0.005,
    max_false_rise: float = 0.05,
    min_iou: float = 0.95,
    command: str = "",
    log: Callable[[str], None] = print,
) -> DetectorManifest:
    """Quantize `model_dir`'s fp32 detector into the model folder `out`; GateFailed when val scenes say no."""
    import onnx

    from vision.runtimes.openvino import OpenVinoDetector

    reference = OnnxDetector(model_dir)
    fp32 = reference.manifest
    if fp32.precision != "fp32":
        raise ValueError(f"{model_dir} is already {fp32.precision}: quantize its fp32 parent")
    size = fp32.input.size
    photos, _, cutouts = load_sources(data, "train")
    composer = TrainingScenes(photos, cutouts)
    pixels = [detector_input(composer.scene(CALIBRATION_SEED + i).image, size)[None] for i in range(calibration)]
    val_photos, val_labels, _ = load_sources(data, "val")
    if not val_photos:
        raise ValueError(f"{data}: the val split has no photos for the gate")
    gate_scenes = evaluation_scenes(list(zip(val_photos, val_labels)), scenes, GATE_SEED)
    log(f"calibrating on {calibration} scenes of train photos; gate on {scenes} scenes of val photos")
    quantized = _quantize(model_dir / fp32.onnx_file, pixels)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as scratch:
        staged = Path(scratch) / "model"
        graph = staged / "1" / "model.onnx"
        graph.parent.mkdir(parents=True)
        onnx.save(quantized, str(graph))
        fp32.model_copy(update={"onnx_file": "1/model.onnx"}).save(staged)
        limits = {"max_drop": max_drop, "max_false_rise": max_false_rise, "min_iou": min_iou}
        gate_pixels = [detector_input(s.image, size)[None] for s in gate_scenes]
        figures, gate = _gate(reference, OpenVinoDetector(staged), gate_pixels, [s.boxes for s in gate_scenes], limits)
        log(f"val scenes: {figures}; gate: {gate}")
        if not gate["passed"]:
            raise GateFailed(f"the int8 detector lost more than allowed on val scenes: {gate}")
        record = {
            "method": "nncf post-training quantization (QDQ ONNX, 7-bit weights: overflow fix on all layers; head fp32)",
            "parent": fp32.served_id,
            "calibration": f"{calibration} scenes composed from {data.name}:train (seeds from {CALIBRATION_SEED})",
            "calibration_checksum": hashlib.sha256(b"".join(p.tobytes() for p in pixels)).hexdigest(),
            "val": figures,
            "gate": gate,
        }
        version = hashlib.sha256(graph.read_bytes()).hexdigest()[:12]
        fp32.model_copy(
            update={
                "model_id": f"{fp32.model_id}-int8",
                "version": version,
                "precision": "int8",
                "onnx_file": "1/model.onnx",
                "command": command,
                "metrics": {},
                "quantization": record,
            }
        ).save(staged)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(staged), str(out))  # the folder appears whole, or not at all
    return DetectorManifest.load(out)
