"""`seesku train detector`: the product detector, trained on composed scenes (training/detection/composites.py).

Targets are CenterNet's: per product, a Gaussian peak at its centre cell on the score map (an ellipse as wide
and high as a sixth of the box), the centre's offset within that cell and the box's log width and height in
cells; the loss is the penalty-reduced focal loss on the scores plus L1 on the geometry at the centre cells.
Every epoch is a fixed number of seeded scenes (scene seed = seed, epoch, step), so `--resume` after a stop
continues with the scenes the run would have seen. The epoch's detection AP@0.5 on scenes of the val split's
photos picks `best.pt` (AP@0.75 breaks ties); the test split is never read.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.checkpoints import resume_state, save_atomically
from training.data import load_photos
from training.detection.composites import Scene, TrainingScenes, cutout, evaluation_scenes
from training.detection.metrics import average_precision
from vision.detection import decode_detections, detector_input
from vision.detector import ProductDetector
from vision.preprocess import decode

PHOTO_SIDE = 256  # product photos are kept this large in memory: a pasted product is at most ~210 px
VAL_SCENES = 120
VAL_SEED = 1001


@dataclass
class DetectorConfig:
    data: str
    out: str
    backbone: str = "tf_efficientnet_lite0"
    input_size: int = 256
    epochs: int = 8
    steps_per_epoch: int = 250
    batch: int = 16
    lr: float = 2e-3
    trunk_lr_mult: float = 0.25
    frozen_stages: int = 2  # the stem and the first stages (strides 2 and 4) keep their ImageNet weights
    weight_decay: float = 1e-4
    scene_side: int = 384
    seed: int = 0
    threads: int = 0


def _photo(path: Path) -> Image.Image:
    im = decode(path.read_bytes(), min_size=PHOTO_SIDE)
    im.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.BICUBIC)
    return im


def load_sources(data: str | Path, split: str) -> tuple[list[Image.Image], list[int], list[Image.Image]]:
    """The split's product photos (kept small), their fine labels, and the iconic photos cut out."""
    photos = load_photos(data, split)
    images = [_photo(p.path) for p in photos.photos]
    cutouts = [cutout(Image.open(path).convert("RGB")) for _, path in sorted(photos.iconic.items())]
    return images, [p.fine for p in photos.photos], cutouts


def targets(boxes: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score map (G, G), geometry (4, G, G) and its mask (G, G) for one scene's boxes (fractions)."""
    heat = np.zeros((grid, grid), np.float32)
    geometry = np.zeros((4, grid, grid), np.float32)
    mask = np.zeros((grid, grid), np.float32)
    ys, xs = np.mgrid[:grid, :grid].astype(np.float32)
    for x0, y0, x1, y1 in boxes * grid:
        w, h = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        px, py = min(int(cx), grid - 1), min(int(cy), grid - 1)
        sx, sy = max(w / 6, 0.5), max(h / 6, 0.5)
        peak = np.exp(-((xs - px) ** 2) / (2 * sx**2) - ((ys - py) ** 2) / (2 * sy**2))
        heat = np.maximum(heat, peak)
        heat[py, px] = 1.0
        geometry[:, py, px] = (cx - px, cy - py, math.log(w), math.log(h))
        mask[py, px] = 1.0
    return heat, geometry, mask


def detection_loss(
    logits: torch.Tensor, geometry: torch.Tensor, heat: torch.Tensor, target_geo: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """CenterNet's focal loss (alpha 2, beta 4) plus L1 on offsets and log sizes, per product."""
    p = logits.squeeze(1).sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = heat.eq(1.0).float()
    pos = -torch.log(p) * (1 - p) ** 2 * positive
    neg = -torch.log(1 - p) * p**2 * (1 - heat) ** 4 * (1 - positive)
    count = positive.sum().clamp(min=1.0)
    focal = (pos.sum() + neg.sum()) / count
    l1 = (F.l1_loss(geometry, target_geo, reduction="none").sum(1) * mask).sum() / count
    return focal + l1


def batch_of(scenes: list[Scene], size: int, grid: int) -> tuple[torch.Tensor, ...]:
    pixels = np.stack([detector_input(s.image, size) for s in scenes])
    parts = [targets(s.boxes, grid) for s in scenes]
    return (
        torch.from_numpy(pixels),
        torch.from_numpy(np.stack([p[0] for p in parts])),
        torch.from_numpy(np.stack([p[1] for p in parts])),
        torch.from_numpy(np.stack([p[2] for p in parts])),
    )


@torch.no_grad()
def detect(model: ProductDetector, images: list[Image.Image], threshold: float = 0.05, batch: int = 16):
    """Boxes of each image (scored down to `threshold`, for AP), as the service decodes them."""
    model.eval()
    found = []
    for start in range(0, len(images), batch):
        pixels = np.stack([detector_input(im, model.input_size) for im in images[start : start + batch]])
        scores, boxes = (t.numpy() for t in model(torch.from_numpy(pixels)))
        found += [decode_detections(s, b, threshold, 0.5, 20) for s, b in zip(scores, boxes)]
    return found


def validation_ap(model: ProductDetector, scenes: list[Scene]) -> dict[str, float]:
    """AP at IoU 0.5 (the issue's figure) and 0.75 (how tight the boxes are: it still moves once AP@0.5 is
    all but 1 on composed scenes, so it breaks the tie when `best.pt` is chosen)."""
    found = detect(model, [s.image for s in scenes])
    truth = [s.boxes for s in scenes]
    return {"val_ap50": average_precision(found, truth, 0.5), "val_ap75": average_precision(found, truth, 0.75)}


def selection_score(record: dict) -> float:
    """What `best.pt` keeps the highest of: AP@0.5, ties broken by AP@0.75; without val, the lowest loss."""
    if "val_ap50" not in record:
        return -record["loss"]
    return round(record["val_ap50"], 4) + 1e-3 * record.get("val_ap75", 0.0)


def optimiser_and_schedule(model: ProductDetector, config: DetectorConfig):
    """AdamW (the trunk's tuned stages at lr x trunk_lr_mult), linear warm-up then cosine, per step."""
    trunk = {id(p) for p in model.trunk_parameters()}
    head = [p for p in model.parameters() if id(p) not in trunk]
    tuned = [p for p in model.trunk_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": tuned, "lr": config.lr * config.trunk_lr_mult}, {"params": head, "lr": config.lr}],
        weight_decay=config.weight_decay,
    )
    total = config.epochs * config.steps_per_epoch
    warmup = min(200, total // 10)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epoch(
    model, optimizer, schedule, scenes: TrainingScenes, config: DetectorConfig, epoch: int, update
) -> float:
    """One epoch of seeded scenes; returns the mean loss. `update(step, running loss, scenes/s)`."""
    grid = config.input_size // model.stride
    started, running, total_loss = time.perf_counter(), None, 0.0
    for step in range(config.steps_per_epoch):
        base = ((config.seed * 1000 + epoch) * config.steps_per_epoch + step) * config.batch
        batch = [scenes.scene(base + i) for i in range(config.batch)]
        pixels, heat, geo, mask = batch_of(batch, config.input_size, grid)
        logits, geometry = model.raw(pixels)
        loss = detection_loss(logits, geometry, heat, geo, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total_loss += loss.item()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if update:
            update(step + 1, running, (step + 1) * config.batch / (time.perf_counter() - started))
    return total_loss / config.steps_per_epoch


def train_detector(config: DetectorConfig, resume: bool = False, ui=None) -> Path:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    state = None
    if resume:
        same = ("data", "backbone", "input_size")
        state, recipe = resume_state(last, asdict(config), same=same, keep=("epochs", "threads"))
        config = DetectorConfig(**recipe)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)

    stage = ui.stage("reading photos") if ui else None
    photos, _, cutouts = load_sources(config.data, "train")
    val_photos, val_labels, _ = load_sources(config.data, "val")
    val_scenes = evaluation_scenes(list(zip(val_photos, val_labels)), VAL_SCENES, VAL_SEED) if val_photos else []
    if stage:
        stage(1, 1)
    scenes = TrainingScenes(photos, cutouts, config.scene_side)

    model = ProductDetector(config.backbone, config.input_size, pretrained=state is None)
    frozen = model.freeze(config.frozen_stages)
    optimizer, schedule = optimiser_and_schedule(model, config)
    start, best, history = 0, -1.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        start, best, history = state["epoch"] + 1, state["best"], state["history"]

    for epoch in range(start, config.epochs):
        model.train()
        for module in frozen:  # their batch statistics stay ImageNet's
            module.eval()
        update = ui.epoch(epoch, config.epochs, config.input_size, config.steps_per_epoch) if ui else None
        started = time.perf_counter()
        record = {"epoch": epoch + 1, "loss": train_epoch(model, optimizer, schedule, scenes, config, epoch, update)}
        record["seconds"] = round(time.perf_counter() - started, 1)
        if val_scenes:
            record.update(validation_ap(model, val_scenes))
        history.append(record)
        score = selection_score(record)
        improved = score > best
        best = max(best, score)
        meta = {"config": asdict(config), "epoch": epoch, "history": history}
        if improved:
            save_atomically({"model": model.state_dict(), **meta}, out / "best.pt")
        parts = {"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(), "best": best}
        save_atomically({"model": model.state_dict(), **parts, **meta}, last)
        with open(out / "history.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if ui:
            ui.epoch_done(record, improved)
    return out / "best.pt"


def load_detector(path: str | Path) -> tuple[ProductDetector, dict]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = DetectorConfig(**state["config"])
    model = ProductDetector(config.backbone, config.input_size, pretrained=False)
    model.load_state_dict(state["model"])
    return model.eval(), state
