import io

import numpy as np
import pillow_heif
import pytest
from PIL import Image

from tests.images import SAMPLE_PHOTO, encode, halves, noise, png_claiming
from vision.preprocess import (
    EmptyImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    InputSpec,
    Limits,
    TooManyPixelsError,
    UnreadableImageError,
    centre_crop_box,
    decode,
    load_image,
    thumbnail,
    to_model_input,
    torch_resize,
)

SPEC = InputSpec(224, 0.875)


def red_left(arr: np.ndarray) -> bool:
    left, right = arr[:, : arr.shape[1] // 4].mean((0, 1)), arr[:, -arr.shape[1] // 4 :].mean((0, 1))
    return bool(left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60)


@pytest.mark.parametrize(
    "fmt,kwargs,mode",
    [
        ("JPEG", {"quality": 95}, "RGB"),
        ("PNG", {}, "RGB"),
        ("WEBP", {"lossless": True}, "RGB"),
        ("BMP", {}, "RGB"),
        ("TIFF", {}, "RGB"),
        ("JPEG", {"quality": 95}, "L"),
        ("JPEG", {"quality": 95}, "CMYK"),
    ],
)
def test_formats_decode_to_rgb_model_input(fmt, kwargs, mode):
    im = halves().convert(mode)
    arr = load_image(encode(im, fmt, **kwargs), SPEC)
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    if mode != "L":
        assert red_left(arr)


def test_heic():
    buf = io.BytesIO()
    pillow_heif.from_pillow(halves()).save(buf, quality=95)
    assert red_left(load_image(buf.getvalue(), SPEC))


def test_png_alpha_composited_over_white():
    im = Image.new("RGBA", (100, 100), (255, 0, 0, 0))  # fully transparent red
    arr = load_image(encode(im, "PNG"), SPEC)
    assert arr.min() >= 250  # white, not red or black


def test_png_16_bit_scaled_not_clipped():
    arr16 = np.full((64, 64), 32768, np.uint16)  # mid grey in 16 bits
    arr = load_image(encode(Image.fromarray(arr16), "PNG"), SPEC)
    assert 120 <= arr.mean() <= 135


def test_palette_png_with_transparency():
    im = halves().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    im.info["transparency"] = 0
    arr = load_image(encode(im, "PNG", transparency=0), SPEC)
    assert arr.shape == (224, 224, 3)


def test_gif_first_frame():
    frames = [Image.new("RGB", (80, 80), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    arr = load_image(data, SPEC)
    assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 50


@pytest.mark.parametrize("orientation,expect_red_left", [(1, True), (3, False), (2, False)])
def test_exif_orientation_applied(orientation, expect_red_left):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(halves((300, 300)), "JPEG", quality=95, exif=exif.tobytes())
    assert red_left(load_image(data, SPEC)) == expect_red_left


def test_exif_rotation_swaps_sides():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a landscape photo comes out portrait
    im = decode(encode(halves((300, 200)), "JPEG", exif=exif.tobytes()))
    assert im.size == (200, 300)


def test_large_jpeg_uses_dct_scaling():
    data = encode(noise((4000, 3000)), "JPEG", quality=80)
    drafted = decode(data, min_size=SPEC.resize_size)
    assert drafted.size == (500, 375)  # libjpeg 1/8 scale, short side still >= 256
    assert decode(data).size == (4000, 3000)
    assert load_image(data, SPEC).shape == (224, 224, 3)


def test_model_input_matches_reference_resize_then_crop():
    """One resample of the crop box == timm's Resize(256) + CenterCrop(224), up to interpolation noise."""
    im = decode(SAMPLE_PHOTO.read_bytes())
    w, h = im.size
    s = SPEC.resize_size / min(w, h)
    resized = im.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    reference = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32)
    ours = load_image(SAMPLE_PHOTO.read_bytes(), SPEC).astype(np.float32)
    assert np.abs(ours - reference).mean() < 4.0


@pytest.mark.parametrize("size", [(320, 320), (282, 282), (397, 250), (250, 397), (1000, 751), (224, 224), (100, 60)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_torch_resize_is_pillows_filter(size, interpolation):
    """Bulk tagging resamples on torch's kernel: the same pixels as Pillow's, within rounding, at any
    shape, up- or downscaled, so a tagged photo embeds as a search of it does."""
    spec = InputSpec(224, 0.875, interpolation)
    im = decode(SAMPLE_PHOTO.read_bytes()).resize(size, Image.Resampling.BILINEAR)
    box = centre_crop_box(*size, spec)
    assert 0 <= box[0] < box[2] <= size[0] and 0 <= box[1] < box[3] <= size[1]
    pillow = to_model_input(im, spec).astype(int)
    resize = torch_resize(threads=None)  # the test run's torch keeps its threads
    assert resize is not None  # torch is installed wherever the tests run
    torch = to_model_input(im, spec, resize).astype(int)
    assert pillow.shape == torch.shape == (224, 224, 3)
    differ = np.abs(pillow - torch)
    assert differ.max() <= 2 and (differ > 1).sum() <= 5  # rounding of the fixed-point weights
    assert (differ > 0).mean() < 0.02


def test_empty():
    with pytest.raises(EmptyImageError):
        load_image(b"")


def test_text_is_not_an_image():
    with pytest.raises(UnreadableImageError):
        load_image(b"this is a text file, not a photo\n" * 10)


def test_truncated_jpeg():
    data = SAMPLE_PHOTO.read_bytes()
    with pytest.raises(UnreadableImageError):
        load_image(data[: len(data) // 2])


def test_zero_size_png():
    with pytest.raises((ImageTooSmallError, UnreadableImageError)):
        load_image(png_claiming(0, 0))


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(TooManyPixelsError):
        load_image(png_claiming(100_000, 100_000))


def test_byte_limit():
    with pytest.raises(ImageTooLargeError):
        load_image(SAMPLE_PHOTO.read_bytes(), limits=Limits(max_bytes=1000))


def test_pixel_limit_from_settings():
    with pytest.raises(TooManyPixelsError):
        load_image(encode(noise((400, 300)), "PNG"), limits=Limits(max_pixels=100_000))


def test_thumbnail_is_small_jpeg():
    data = thumbnail(encode(noise((1200, 800)), "PNG"), 128)
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG" and max(im.size) == 128
