"""The one preprocessing transform: encoded photo bytes -> uint8 HWC RGB model input.

Every channel goes through `prepare_photo` (search, catalogue writes, bulk tagging, the Triton python
backend, training evaluation and the benchmarks; `load_image` is its pixels alone), so what the model sees
never depends on how the photo arrived: the limits are checked on the header, then the photo is decoded
(DCT-scaled for large JPEGs, EXIF-rotated, RGB) and cropped and resampled once. Normalisation (mean/std) is *not* done here: the
exported graph does it, so the tensor that crosses a process or network boundary stays uint8.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF (iPhone photos); optional so a minimal install still decodes everything else
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - pillow-heif is a core dependency
    HEIF_SUPPORTED = False

# A truncated upload is an error, never a half-grey image silently embedded.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We enforce our own pixel limit before decoding; PIL's global guard would otherwise raise its own
# exception type (or only warn) at a limit we do not control.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class ImageError(ValueError):
    """A photo we refuse, with a machine-readable `code` the API maps to a status."""

    code = "invalid_image"


class EmptyImageError(ImageError):
    code = "empty_image"


class ImageTooLargeError(ImageError):
    """More bytes than allowed (HTTP 413)."""

    code = "image_too_large"


class TooManyPixelsError(ImageError):
    """Header declares more pixels than allowed: a decompression bomb or pixel flood (HTTP 422)."""

    code = "too_many_pixels"


class UnreadableImageError(ImageError):
    """Not an image, an unsupported format, or a damaged/truncated file."""

    code = "unreadable_image"


class ImageTooSmallError(ImageError):
    code = "image_too_small"


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its pixels; travels with the model in its manifest (timm's pretrained_cfg)."""

    size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    @property
    def resize_size(self) -> int:
        """Short side before the centre crop, as timm's eval transform computes it."""
        return int(self.size / self.crop_pct)


Resize = Callable[[np.ndarray, InputSpec], np.ndarray]  # HWC uint8 crop -> (size, size, 3) uint8


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> Limits:
        """The limits a Triton model's config parameters set (`seesku triton serve` writes the service's own);
        the defaults where one is empty or missing."""
        return cls(
            int(parameters.get("max_upload_bytes") or DEFAULT_MAX_BYTES),
            int(parameters.get("max_image_pixels") or DEFAULT_MAX_PIXELS),
        )


def open_image(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Open (header only) and check limits before any pixel is decoded."""
    if not data:
        raise EmptyImageError("the upload is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"the upload is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnreadableImageError("the upload is not an image in a supported format") from None
    except Exception as exc:  # PIL raises assorted types on corrupt headers
        raise UnreadableImageError(f"the image header could not be read: {exc}") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageTooSmallError(f"the image is {width}x{height} pixels")
    if width * height > limits.max_pixels:
        raise TooManyPixelsError(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    return im


def decode(data: bytes, min_size: int | None = None, limits: Limits = Limits()) -> Image.Image:
    """Decode to an upright 8-bit RGB image.

    `min_size`: the short side the caller needs. Large JPEGs are then decoded with DCT scaling (libjpeg's
    1/2, 1/4, 1/8), so a 12 MP phone photo is never decoded at full size.
    """
    return decode_opened(open_image(data, limits), min_size)


def decode_opened(im: Image.Image, min_size: int | None = None) -> Image.Image:
    """`decode` for an image `open_image` already opened and checked (callers that also need its header)."""
    try:
        if im.format == "GIF" or getattr(im, "n_frames", 1) > 1:
            im.seek(0)  # animated images: the first frame
        if min_size and im.format == "JPEG":
            # draft keeps both sides >= the requested box, so the short side stays >= min_size;
            # EXIF rotation only swaps the sides, which the square box does not care about.
            im.draft("RGB", (min_size, min_size))
        im.load()
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except ImageError:
        raise
    except Exception as exc:  # truncated data, broken chunks, decoder errors
        raise UnreadableImageError(f"the image could not be decoded: {exc}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: scale to 8 bits instead of PIL's clipping convert().
        arr = np.asarray(im, dtype=np.uint32 if mode == "I" else np.uint16).astype(np.float64)
        peak = 65535.0 if mode != "I" else max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
        mode = "L"
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        im = Image.fromarray(arr.astype(np.uint8), "L")
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if mode == "RGB" else im.convert("RGB")


def centre_crop_box(width: int, height: int, spec: InputSpec = InputSpec()) -> tuple[int, int, int, int]:
    """The box of the source, in whole pixels, that becomes the model input.

    timm's eval transform (short side to `spec.resize_size`, centre crop `spec.size`) expressed as a box of the
    source, so one resample does both: less work, one interpolation instead of two. Whole pixels, so every
    resampler (Pillow, torch) sees exactly the same source pixels and filters them the same way.
    """
    scale = spec.resize_size / min(width, height)
    crop_w = min(width, max(1, round(spec.size / scale)))
    crop_h = min(height, max(1, round(spec.size / scale)))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def to_model_input(im: Image.Image, spec: InputSpec = InputSpec(), resize: Resize | None = None) -> np.ndarray:
    """The centre crop (`centre_crop_box`) resampled to `spec.size` square, as uint8 HWC RGB.

    `resize`: a faster resampler of the same filter for bulk work (`torch_resize`); Pillow's by default.
    """
    box = centre_crop_box(*im.size, spec)
    if resize is not None:
        left, top, right, bottom = box
        return resize(np.asarray(im)[top:bottom, left:right], spec)
    out = im.crop(box).resize((spec.size, spec.size), _RESAMPLE.get(spec.interpolation, Image.Resampling.BICUBIC))
    return np.asarray(out, dtype=np.uint8)


def torch_resize(threads: int | None = 1) -> Resize | None:
    """Pillow's antialiased bicubic/bilinear resample on torch's uint8 AVX2 kernel, for worker processes.

    The same filter as Pillow's (torch wrote it to match PIL; outputs differ by rounding, at most 2 levels on
    a few pixels, checked in tests/vision/test_preprocess.py), about 5x faster: 0.22 vs 1.1 ms for a 280 px crop to
    224 px. Bulk tagging decodes in worker processes that share the cores with the model, so this is model
    time won back.
    None where torch is not installed (the serving-only install): callers fall back to Pillow. `threads` sets
    torch's threads for the whole process (one by default: a decode worker beside the model), hence for
    worker processes, never the API process; None leaves them as they are.
    """
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    import cv2  # here, not at the top: Triton's python-backend environment has no OpenCV

    if threads is not None:
        torch.set_num_threads(threads)

    def resize(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).unsqueeze(0)
        mode = spec.interpolation if spec.interpolation in ("bicubic", "bilinear") else "bicubic"
        y = F.interpolate(x, size=(spec.size, spec.size), mode=mode, antialias=True, align_corners=False)
        return cv2.merge(list(y[0].numpy()))  # planes to HWC: 0.015 ms, a strided numpy copy takes 0.17

    return resize


@dataclass(frozen=True)
class PhotoHeader:
    """What the upload itself says, before any pixel changes: its format and its size as stored (before
    EXIF rotation and DCT scaling)."""

    format: str | None
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return Image.MIME.get(self.format or "", "application/octet-stream")


def prepare_photo(
    data: bytes, spec: InputSpec = InputSpec(), limits: Limits = Limits(), resize: Resize | None = None
) -> tuple[PhotoHeader, np.ndarray]:
    """Photo bytes -> its header and the model input, uint8 of shape (spec.size, spec.size, 3); ImageError
    for a photo we refuse. `resize`: see `to_model_input`."""
    im = open_image(data, limits)
    header = PhotoHeader(im.format, *im.size)
    return header, to_model_input(decode_opened(im, spec.resize_size), spec, resize)


def load_image(data: bytes, spec: InputSpec = InputSpec(), limits: Limits = Limits()) -> np.ndarray:
    """The model input of `prepare_photo` alone."""
    return prepare_photo(data, spec, limits)[1]


def thumbnail(data: bytes, size: int = 256, limits: Limits = Limits()) -> bytes:
    """A small upright JPEG of a stored photo, for product listings."""
    im = decode(data, min_size=size, limits=limits)
    im.thumbnail((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()
