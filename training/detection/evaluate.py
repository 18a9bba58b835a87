"""`seesku eval objects`: several products in one photo, through the service's own search with objects=true.

Scenes of 2-5 different products are composed from a split's photos (training/detection/composites.py; the
test split only for the final row) and saved as a phone would send them (JPEG). Each goes through
`CatalogService.search(objects=True)` against the sample catalogue, and is scored on:
- detection AP@0.5 (the detector alone, every box down to a low score);
- found: the share of the scene's products that come back as the first match of a returned object whose
  box overlaps theirs with IoU >= 0.5 (what the shopper gets: the product, boxed and named);
- false objects per photo: returned objects that overlap no product (or a product already found);
- a sweep of the detector's score threshold (recall and false objects of the detector alone), to choose it
  on val;
and on the split's single-product photos: top-1 of the whole-photo answer against top-1 of the first
returned object (none returned counts as wrong).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import load_photos
from training.detection.composites import Scene, evaluation_scenes, jpeg
from training.detection.metrics import average_precision, match, recall_and_false
from training.detection.train import _photo
from training.report_files import write_result
from vision.detection import detector_input, iou_matrix

SEEDS = {"val": 11, "test": 12, "train": 13}
SWEEP = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
AP_THRESHOLD = 0.02


def scene_photos(data: Path, split: str) -> tuple[list[tuple[Image.Image, int]], list[str], list]:
    photos = load_photos(data, split)
    if not photos.photos:
        raise ValueError(f"{data}: the {split} split has no photos")
    return [(_photo(p.path), p.fine) for p in photos.photos], photos.fine_labels, photos.photos


def _sweep(found_low: list, scenes: list[Scene]) -> dict[str, dict[str, float]]:
    """Recall and false objects per photo of the detector alone at each score threshold."""
    return {f"{t:.2f}": recall_and_false(found_low, [s.boxes for s in scenes], t) for t in SWEEP}


def evaluate_objects(
    data: Path, split: str, service, scenes: int = 200, singles: int | None = None, log: Callable[[str], None] = print
) -> dict:
    """The figures above for `split`, with `service` a catalogue service holding the sample catalogue."""
    photos, labels, items = scene_photos(data, split)
    composed = evaluation_scenes(photos, scenes, SEEDS.get(split, 14))
    log(f"{len(composed)} scenes of {split} photos ({sum(len(s.labels) for s in composed)} products)")
    detector = service.detector
    size = detector.manifest.input.size
    found_low = [detector.detect(detector_input(s.image, size)[None], AP_THRESHOLD)[0] for s in composed]
    found_products, total_products, false_objects, with_objects, plain = 0, 0, 0, [], []
    for scene in composed:
        data_bytes = jpeg(scene.image, 90)
        started = time.perf_counter()
        result = service.search(data_bytes, k=5, objects=True)
        with_objects.append(time.perf_counter() - started)
        started = time.perf_counter()
        service.search(data_bytes, k=5)
        plain.append(time.perf_counter() - started)
        objects = result.objects
        hits = match([o.box for o in objects], scene.boxes, 0.5) if objects else []
        false_objects += sum(h < 0 for h in hits)
        truth = [labels[label] for label in scene.labels]
        total_products += len(truth)
        for j, product in enumerate(truth):
            boxes = np.stack([o.box.as_array() for o in objects]) if objects else np.zeros((0, 4))
            overlaps = iou_matrix(scene.boxes[j], boxes)[0] if len(boxes) else np.zeros(0)
            if any(
                overlaps[i] >= 0.5 and o.matches and o.matches[0].product.product_id == product
                for i, o in enumerate(objects)
            ):
                found_products += 1
    single = single_photo_top1(items[:singles] if singles else items, labels, service, log)
    return {
        "data": f"{data.name}:{split}",
        "model": service.model_id,
        "detector": detector.manifest.served_id,
        "score_threshold": detector.manifest.score_threshold,
        "scenes": len(composed),
        "products": total_products,
        "ap50": average_precision(found_low, [s.boxes for s in composed], 0.5),
        "found_share": found_products / max(total_products, 1),
        "false_objects_per_photo": false_objects / len(composed),
        "threshold_sweep": _sweep(found_low, composed),
        "single_photo": single,
        "latency_ms_p50": {
            "objects": float(np.median(with_objects) * 1e3),
            "whole_photo": float(np.median(plain) * 1e3),
            "ratio": float(np.median(with_objects) / np.median(plain)),
        },
    }


def single_photo_top1(items: list, labels: list[str], service, log: Callable[[str], None]) -> dict:
    """Top-1 product of the whole photo and of its first object, over the split's single-product photos."""
    whole, first_object, no_object = 0, 0, 0
    for photo in items:
        result = service.search(photo.path.read_bytes(), k=1, objects=True)
        truth = labels[photo.fine]
        whole += bool(result.matches) and result.matches[0].product.product_id == truth
        if not result.objects:
            no_object += 1
            continue
        top = result.objects[0].matches
        first_object += bool(top) and top[0].product.product_id == truth
    n = len(items)
    log(f"{n} single-product photos")
    return {
        "photos": n,
        "top1_whole_photo": whole / n,
        "top1_first_object": first_object / n,
        "no_object": no_object / n,
    }


def table(result: dict) -> str:
    single = result["single_photo"]
    lines = [
        f"{result['detector']} + {result['model']} on {result['data']}: {result['scenes']} scenes of 2-5 products "
        f"({result['products']} products), score threshold {result['score_threshold']}",
        "",
        "| AP@0.5 | products found (top match of an overlapping box) | false objects per photo | "
        "single photos: top-1 whole / first object (no object) | p50 objects / whole photo |",
        "|---|---|---|---|---|",
        f"| {result['ap50']:.3f} | {result['found_share']:.2%} | {result['false_objects_per_photo']:.2f} | "
        f"{single['top1_whole_photo']:.2%} / {single['top1_first_object']:.2%} ({single['no_object']:.2%}) | "
        f"{result['latency_ms_p50']['ratio']:.2f}x |",
        "",
        "| detector threshold | recall (IoU >= 0.5) | false objects per photo |",
        "|---|---|---|",
    ]
    lines += [
        f"| {t} | {row['recall']:.2%} | {row['false_per_photo']:.2f} |" for t, row in result["threshold_sweep"].items()
    ]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path, name: str, split: str) -> Path:
    return write_result(result, table(result), out, name, split)
