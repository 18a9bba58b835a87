"""Several products in one photo: find each with the detector, then search each crop by the search's own rule.

The detector sees the whole-photo search's own decode (upright after EXIF rotation, DCT-scaled for large
JPEGs), so the boxes, in fractions of that upright photo, are also fractions of the photo as the shopper
sees it; the crops come from a larger decode (`vision.detection.find_products`, shared with Triton's
object_crops), and are embedded in one batch with the whole photo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from api.catalog.ranking import Match
from vision.detection import Box, find_products
from vision.preprocess import InputSpec, Limits
from vision.runtimes import Detector


class DetectorUnavailable(RuntimeError):
    """objects=true asked of a service that has no detector model."""


@dataclass
class FoundObject:
    """One product found in the photo: where, how sure the detector is, and its own search answer."""

    box: Box
    matches: list[Match]
    fine: list[tuple[str, float]]
    coarse: list[tuple[str, float]]
    matched: bool
    match_confidence: float


def object_inputs(
    data: bytes, photo: Image.Image, detector: Detector, spec: InputSpec, limits: Limits
) -> tuple[list[Box], list[np.ndarray]]:
    """The products the detector finds in the photo and each one's embedder input; `photo`: the upright
    photo as the whole-photo search decoded it."""
    return find_products(
        data, photo, lambda pixels: detector.detect(pixels)[0], detector.manifest.input.size, spec, limits
    )


def answer_objects(
    boxes: list[Box],
    outputs,
    rank: Callable[[np.ndarray, np.ndarray], list[Match]],
    judge: Callable[[list[Match], np.ndarray], tuple[bool, float]],
    categories: Callable[[np.ndarray, np.ndarray], tuple[list, list]],
) -> list[FoundObject]:
    """Each box's answer from its row of the embedder's outputs, by the whole photo's rank, judge and
    categories, so an object is ranked and personalised as a photo of it alone would be."""
    found = []
    for row, box in enumerate(boxes):
        matches = rank(outputs.embedding[row], outputs.fine_probs[row])
        matched, confidence = judge(matches, outputs.fine_probs[row])
        fine, coarse = categories(outputs.fine_probs[row], outputs.coarse_probs[row])
        found.append(FoundObject(box, matches, fine, coarse, matched, confidence))
    return found
