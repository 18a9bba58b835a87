"""What a photo's pixels say about it before any model does: sharpness, size, and its layout (for telling a
re-encoded copy from another shot of the same product)."""

from __future__ import annotations

import cv2
import numpy as np

from api.tagging.options import TagOptions


def blur_variance(gray: np.ndarray) -> float:
    """Variance of the Laplacian: low for a blurry photo."""
    return float(cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))[1][0, 0] ** 2)


def layout_vector(gray: np.ndarray) -> np.ndarray:
    """16x16 grey thumbnail, mean-centred and L2-normalised: the dot product of two is their correlation,
    unchanged by resizing, re-encoding and brightness, and low for another shot of the same product."""
    small = cv2.resize(gray, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    small -= small.mean()
    return small / (np.linalg.norm(small) + 1e-6)


def measure(pixels: np.ndarray, width: int, height: int, options: TagOptions) -> dict:
    """Quality of one decoded photo (`pixels`: its model input; width, height: the upload's own size): its
    blur variance, flags (too_small, blurry) and layout vector (`_layout`, kept out of the results)."""
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    blur = blur_variance(gray)
    flags = []
    if min(width, height) < options.min_side:
        flags.append("too_small")
    if blur < options.blur_threshold:
        flags.append("blurry")
    return {
        "status": "ok",
        "width": width,
        "height": height,
        "blur_variance": round(blur, 1),
        "flags": flags,
        "_layout": layout_vector(gray),
    }
