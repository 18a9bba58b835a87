"""A 12 MP phone JPEG to model input: full decode vs DCT-scaled decode (vision.preprocess), in one run.

python bench/decode.py
"""

from __future__ import annotations

import io

import numpy as np
from common import MODEL_DIR, QUERY_PHOTOS, emit, median_ms
from PIL import Image

from vision.manifest import ModelManifest
from vision.preprocess import decode, load_image, to_model_input

SPEC = ModelManifest.load(MODEL_DIR).input.spec()  # the shipped model's input


def phone_photo() -> bytes:
    """A real shelf photo upscaled to 4000x3000 with sensor-like noise, saved as a q92 JPEG."""
    im = Image.open(QUERY_PHOTOS[0]).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    arr = np.asarray(im).astype(np.int16)
    arr += np.random.default_rng(0).integers(-6, 7, arr.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def main() -> None:
    data = phone_photo()
    full = median_ms(lambda: to_model_input(decode(data), SPEC), repeats=15)
    scaled = median_ms(lambda: load_image(data, SPEC), repeats=15)
    # the two paths must give the model the same picture, not just a faster one
    diff = float(np.abs(to_model_input(decode(data), SPEC).astype(int) - load_image(data, SPEC)).mean())
    emit(
        {
            "bench": "decode",
            "photo": {"width": 4000, "height": 3000, "bytes": len(data)},
            "full_decode_ms_median": round(full, 2),
            "dct_scaled_ms_median": round(scaled, 2),
            "speedup": round(full / scaled, 2),
            "mean_abs_pixel_diff": round(diff, 2),
        }
    )


if __name__ == "__main__":
    main()
