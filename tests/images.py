"""Photos made on the fly, in every format the service must read."""

import io

import numpy as np
from PIL import Image

from api.settings import REPO_ROOT

SAMPLE_PHOTO = REPO_ROOT / "samples" / "catalog" / "Banana.jpg"


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def halves(size=(300, 200), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: orientation is visible in the pixels."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2] = left
    arr[:, size[0] // 2 :] = right
    return Image.fromarray(arr)


def noise(size=(320, 240), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header is rewritten to claim width x height (a pixel flood / bomb)."""
    import struct
    import zlib

    data = bytearray(encode(Image.new("RGB", (8, 8)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)  # IHDR payload starts after signature+length+type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def sample_scene(count: int = 3, seed: int = 0, long_side: int = 1024):
    """A photo of `count` different sample-catalogue products and their true boxes and product ids."""
    from training.detection.composites import catalogue_scene

    return catalogue_scene(REPO_ROOT / "samples" / "catalog.csv", count, seed, long_side)
