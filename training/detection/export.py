"""A trained detector checkpoint -> the served model folder (graph + manifest), checked against torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.detection.composites import evaluation_scenes
from training.detection.train import DetectorConfig, load_detector, load_sources
from vision.backbones import REGISTRY
from vision.detection import DetectorInput, DetectorManifest, detector_input
from vision.detector import write_detector

PARITY_SCENES = 8


def export_detector(
    checkpoint: Path, out_dir: Path, command: str = "", log: Callable[[str], None] = print
) -> DetectorManifest:
    model, state = load_detector(checkpoint)
    config = DetectorConfig(**state["config"])
    cfg = REGISTRY[config.backbone]
    best = max(state["history"], key=lambda r: r.get("val_ap50", -r["loss"]))
    manifest = DetectorManifest(
        model_id=f"seesku-detector-{config.backbone.replace('tf_', '').replace('_', '-')}",
        version="",  # write_detector: the graph's checksum
        backbone=config.backbone,
        source_weights=f"{cfg.source} (ImageNet-1k), CenterNet-style head trained on composed scenes",
        input=DetectorInput(size=config.input_size, mean=cfg.mean, std=cfg.std),
        stride=model.stride,
        metrics={k: float(v) for k, v in best.items() if k.startswith("val_")},
        command=command,
        trained_on=f"{Path(config.data).name}:train scenes (product photos and iconic cut-outs on product-free grounds)",
        training=state["history"],
    )
    photos, labels, _ = load_sources(config.data, "val")
    scenes = evaluation_scenes(list(zip(photos, labels)), PARITY_SCENES, seed=7)
    pixels = [detector_input(s.image, config.input_size) for s in scenes]
    return write_detector(model, manifest, out_dir, np.stack(pixels), log)
