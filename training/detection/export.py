"""A trained detector checkpoint -> the served model folder (graph + manifest), checked against torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from training.data import load_photos
from training.detection.composites import evaluation_scenes
from training.detection.train import VAL_SCENES, VAL_SEED, DetectorConfig, load_detector, load_sources, validation_ap
from vision.backbones import REGISTRY
from vision.detection import DetectorInput, DetectorManifest, detector_input
from vision.detector import write_detector

PARITY_SCENES = 8
TRAIN_FLAGS = ("epochs", "steps_per_epoch", "batch", "input_size", "lr", "seed")  # the command's options


def training_command(config: DetectorConfig) -> str:
    """The `seesku train detector` command that trains this recipe."""
    options = {k: v for k, v in asdict(config).items() if k not in ("data", "out", "threads", "frozen_stages")}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items() if k in TRAIN_FLAGS)
    return f"seesku train detector --data {config.data} --out {config.out} {flags}"


def export_detector(
    checkpoint: Path, out_dir: Path, command: str = "", log: Callable[[str], None] = print
) -> DetectorManifest:
    model, state = load_detector(checkpoint)
    config = DetectorConfig(**state["config"])
    cfg = REGISTRY[config.backbone]
    photos, labels, _ = load_sources(config.data, "val")
    # Measured anew, not copied from the run's history: checkpoints of runs recorded before AP@0.75 was.
    log(f"measuring epoch {state['epoch'] + 1} on {VAL_SCENES} scenes of val photos")
    metrics = validation_ap(model, evaluation_scenes(list(zip(photos, labels)), VAL_SCENES, VAL_SEED)) if photos else {}
    manifest = DetectorManifest(
        model_id=f"seesku-detector-{config.backbone.replace('tf_', '').replace('_', '-')}",
        version="",  # write_detector: the graph's checksum
        backbone=config.backbone,
        source_weights=f"{cfg.source} (ImageNet-1k), CenterNet-style head trained on composed scenes",
        input=DetectorInput(size=config.input_size, mean=cfg.mean, std=cfg.std),
        stride=model.stride,
        metrics={**metrics, "epoch": float(state["epoch"] + 1)},
        command=f"{training_command(config)} && {command}" if command else training_command(config),
        data_checksum=load_photos(config.data, "train").checksum(),
        trained_on=f"{Path(config.data).name}:train scenes (product photos and iconic cut-outs on product-free grounds)",
        training=state["history"],
    )
    scenes = evaluation_scenes(list(zip(photos, labels)), PARITY_SCENES, seed=7)
    pixels = [detector_input(s.image, config.input_size) for s in scenes]
    return write_detector(model, manifest, out_dir, np.stack(pixels), log)
