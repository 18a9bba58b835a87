"""The product detector's contract, read without torch: its manifest, its input and what its outputs mean.

The detector finds class-agnostic "a product is here" boxes in a photo, so that each product of a basket or
a shelf is searched on its own. Like the embedder, its exported graph takes uint8 NHWC pixels and normalises
inside; its input is the whole upright photo squashed to `input.size` square (no crop: a product at the
edge counts too), and it answers per cell of its output grid a score and a box in fractions of the photo
(`vision/detector.py` builds and exports it; `training/detection/` trains it). Boxes in fractions survive
every change of scale on the way: the DCT-scaled decode of a large JPEG, the squash, the client's display.

`decode_detections` turns the outputs into boxes (score threshold, then greedy non-maximum suppression);
`find_products` runs the detector on a photo and cuts each box out for the embedder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from vision.files import atomic_write
from vision.preprocess import InputSpec, Limits, decode, to_model_input

MANIFEST_NAME = "manifest.json"
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("scores", "boxes")
# A crop must give the embedder at least this short side before its own resize: the photo is decoded at
# CROP_DECODE_SIDE (DCT-scaled for large JPEGs) so that a product filling a third of it still has ~256 px.
CROP_DECODE_SIDE = 768


class DetectorInput(BaseModel):
    size: int = 256
    layout: str = "NHWC"
    dtype: str = "uint8"
    resize: str = Field("squash", description="the whole photo resized to size x size, aspect not kept")
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


class DetectorManifest(BaseModel):
    model_id: str
    version: str
    backbone: str
    source_weights: str
    input: DetectorInput = DetectorInput()
    stride: int = Field(8, description="output cells are stride x stride pixels of the input")
    onnx_file: str = "1/model.onnx"
    precision: str = Field("fp32", description="fp32, or int8 (a QDQ graph made by `seesku quantize-detector`)")
    quantization: dict | None = Field(None, description="how an int8 graph was made and what it cost on val scenes")
    score_threshold: float = Field(0.35, description="boxes scoring lower are not products")
    nms_iou: float = Field(0.5, description="of two boxes overlapping more than this, the lower-scoring goes")
    max_objects: int = 10
    metrics: dict[str, float] = {}
    command: str = ""
    data_checksum: str = ""
    trained_on: str = Field("", description="what its training scenes were composed of")
    training: list[dict] = []

    @property
    def served_id(self) -> str:
        return f"{self.model_id}:{self.version}"

    def decode(self, scores: np.ndarray, boxes: np.ndarray, threshold: float | None = None) -> list[list[Box]]:
        """A batch of the graph's outputs -> each photo's products (`decode_detections` with this model's
        suppression and cap; its score threshold unless `threshold` says another)."""
        threshold = self.score_threshold if threshold is None else threshold
        return [decode_detections(s, b, threshold, self.nms_iou, self.max_objects) for s, b in zip(scores, boxes)]

    @classmethod
    def load(cls, model_dir: str | Path) -> DetectorManifest:
        path = Path(model_dir) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no detector at {model_dir}: {MANIFEST_NAME} is missing (`seesku train detector`)")
        return cls.model_validate_json(path.read_text())

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / MANIFEST_NAME
        atomic_write(path, json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path


@dataclass(frozen=True)
class Box:
    """A detected product: its box in fractions of the upright photo (0..1, x right, y down) and its score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float32)


def detector_input(im: Image.Image, size: int) -> np.ndarray:
    """The detector's input: the whole upright RGB photo squashed to `size` square, uint8 HWC."""
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `a` (N, 4) with every box in `b` (M, 4), x0 y0 x1 y1."""
    a, b = np.asarray(a, np.float32).reshape(-1, 4), np.asarray(b, np.float32).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def decode_detections(
    scores: np.ndarray, boxes: np.ndarray, threshold: float, nms_iou: float, max_objects: int
) -> list[Box]:
    """One photo's outputs (scores (C,), boxes (C, 4) over the grid's C cells) -> its products, best first.

    The graph already keeps only each 3x3 neighbourhood's peak (CenterNet's max-pool), so one product rarely
    gives two cells; the greedy suppression removes what remains (a long product peaking twice)."""
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")][: max_objects * 4]
    chosen: list[int] = []
    for i in keep:
        if len(chosen) == max_objects:
            break
        if chosen and iou_matrix(boxes[i], boxes[chosen]).max() > nms_iou:
            continue
        chosen.append(int(i))
    return [Box(*np.clip(boxes[i], 0.0, 1.0).tolist(), score=float(scores[i])) for i in chosen]


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The box in whole pixels of a width x height image, at least one pixel wide and high."""
    x0, x1 = sorted((round(box.x0 * width), round(box.x1 * width)))
    y0, y1 = sorted((round(box.y0 * height), round(box.y1 * height)))
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    return x0, y0, max(x0 + 1, min(x1, width)), max(y0 + 1, min(y1, height))


def crop(im: Image.Image, box: Box) -> Image.Image:
    """The part of the upright photo inside `box`."""
    return im.crop(pixel_box(box, *im.size))


def find_products(
    data: bytes,
    photo: Image.Image,
    detect: Callable[[np.ndarray], list[Box]],
    size: int,
    spec: InputSpec,
    limits: Limits,
) -> tuple[list[Box], list[np.ndarray]]:
    """The products in a photo and each one's embedder input, the same for the API and Triton's object_crops.

    `photo`: the upright photo as the whole-photo search decoded it (DCT-scaled to about the embedder's
    size), which the detector sees squashed to `size`; `detect`: one such input (1, size, size, 3) -> its
    boxes. The crops come from a larger decode, CROP_DECODE_SIDE, so that a product filling a third of the
    photo keeps the embedder's resolution; each goes through the one transform."""
    boxes = detect(detector_input(photo, size)[None])
    if not boxes:
        return [], []
    large = decode(data, CROP_DECODE_SIDE, limits)
    return boxes, [to_model_input(crop(large, box), spec) for box in boxes]
