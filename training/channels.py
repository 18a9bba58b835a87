"""`seesku eval channels`: the same photos as each channel delivers them, through the service's own search.

A shopper's photo reaches `/v1/search` re-encoded by an app, a browser or a messenger, resized, converted,
rotated by EXIF. Every version of a photo goes through `CatalogService.search` (the serving decode, the
served model, the ranking rule, against the sample catalogue), so the figures are what the shopper gets.
Reported per channel: top-1 product accuracy, agreement with the original's top-1, the model input's mean
pixel difference from the original's and the embedding's cosine with it (decode or model: a channel whose
pixels hardly differ but whose answers do points at the model); overall: the share of photos whose top-1 is
the same on every channel, and the classes the disagreements come from.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from training.data import load_photos
from training.report_files import write_result
from vision.manifest import ModelManifest
from vision.preprocess import InputSpec, Limits, prepare_photo
from vision.runtimes import Embedder

Encoder = Callable[[Image.Image, bytes], bytes]
PHONE_SIDE = 3464  # a 12 MP square: the DCT-scaled decode path of large camera JPEGs
WEB_SIDE = 256  # a site's resized upload
EXIF_ORIENTATION = 0x0112


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _rotated_with_exif(im: Image.Image, quality: int, orientation: int) -> bytes:
    """Pixels stored as a sensor stores them, upright only after the EXIF orientation is applied."""
    transpose = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return _save(im.transpose(transpose[orientation]), "JPEG", quality=quality, exif=exif.tobytes())


def _heic(im: Image.Image) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return _save(im, "HEIF", quality=80)


def _rgba_png(im: Image.Image) -> bytes:
    rgba = im.convert("RGBA")
    rgba.putalpha(255)
    return _save(rgba, "PNG")


CHANNELS: dict[str, Encoder] = {
    "original": lambda im, data: data,
    "jpeg_q95": lambda im, data: _save(im, "JPEG", quality=95),
    "jpeg_q40": lambda im, data: _save(im, "JPEG", quality=40),  # messengers
    "webp_q80": lambda im, data: _save(im, "WEBP", quality=80),  # browsers, CDNs
    "avif_q60": lambda im, data: _save(im, "AVIF", quality=60),
    "heic_q80": lambda im, data: _heic(im),  # iPhone camera default
    "png": lambda im, data: _save(im, "PNG"),  # screenshots
    "png_rgba": lambda im, data: _rgba_png(im),  # cut-outs with an alpha channel
    "gif_palette": lambda im, data: _save(im.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
    "web_256": lambda im, data: _save(im.resize((WEB_SIDE, WEB_SIDE), Image.Resampling.LANCZOS), "JPEG", quality=85),
    "phone_12mp_exif": lambda im, data: _rotated_with_exif(
        im.resize((PHONE_SIDE, PHONE_SIDE), Image.Resampling.BICUBIC), 92, 6
    ),
    "exif_rotated": lambda im, data: _rotated_with_exif(im, 95, 8),
}


def channel_versions(data: bytes, channels: list[str]) -> dict[str, bytes]:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    return {name: CHANNELS[name](im, data) for name in channels}


class SearchService(Protocol):
    """What this evaluation needs of `api.catalog.service.CatalogService` (passed in: training/ does not
    import the service)."""

    spec: InputSpec
    limits: Limits
    embedder: Embedder
    manifest: ModelManifest
    model_id: str
    ranking: object  # api.catalog.ranking.Ranking

    def search(self, data: bytes, k: int = 10): ...


def evaluate_channels(
    data: Path,
    split: str,
    service: SearchService,
    runtime: str,
    channels: list[str] | None = None,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Every photo of `split` on every channel, searched by `service` (a catalogue service with the sample
    catalogue); the original delivery is the first channel, what the others are compared with."""
    channels = ["original", *[c for c in channels or CHANNELS if c != "original"]]
    photos = load_photos(data, split)
    items = photos.photos[:limit] if limit else photos.photos
    if not items:
        raise ValueError(f"{data}: the {split} split has no photos")
    log(f"{len(items)} {split} photos x {len(channels)} channels")
    rows = [_photo_row(service, p.path.read_bytes(), channels) for p in items]
    truth = [photos.fine_labels[p.fine] for p in items]
    result = _summary(rows, truth, channels, photos.source, service.model_id, runtime)
    trained_data, _, trained_splits = service.manifest.trained_on.rpartition(":")
    # A split the model was fit on still shows how far the channels move its answers; its top-1 is memory.
    result["trained_on_this_split"] = trained_data == photos.source.rpartition(":")[0] and split in trained_splits
    return result


def _photo_row(service, data: bytes, channels: list[str]) -> dict[str, tuple]:
    """channel -> (top-1 product, model input, embedding, score margin of the top-1 over the second)."""
    row = {}
    for name, version in channel_versions(data, channels).items():
        pixels = prepare_photo(version, service.spec, service.limits)[1]
        embedding = service.embedder.embed(pixels[None]).embedding[0]
        matches = service.search(version, k=2).matches
        margin = matches[0].score - matches[1].score if len(matches) > 1 else float("inf")
        row[name] = (matches[0].product.product_id if matches else None, pixels, embedding, margin)
    return row


def _summary(rows: list[dict], truth: list[str], channels: list[str], source: str, model: str, runtime: str) -> dict:
    base = channels[0]
    per_channel = {}
    for name in channels:
        top = [row[name][0] for row in rows]
        per_channel[name] = {
            "top1": float(np.mean([t == y for t, y in zip(top, truth)])),
            f"agrees_with_{base}": float(np.mean([row[name][0] == row[base][0] for row in rows])),
            "input_pixel_diff": float(
                np.mean([np.abs(row[name][1].astype(np.int16) - row[base][1]).mean() for row in rows])
            ),
            "embedding_cosine": float(np.mean([row[name][2] @ row[base][2] for row in rows])),
        }
    same_everywhere = [len({row[name][0] for name in channels}) == 1 for row in rows]
    by_class = Counter(y for y, same in zip(truth, same_everywhere) if not same)
    # Model or decode: photos that change answer across channels, were they already wrong, or close calls,
    # on the original delivery? (margin: ranking score of the first product over the second)
    changing = [(row, y) for row, y, same in zip(rows, truth, same_everywhere) if not same]
    margins = {
        "changing": [row[base][3] for row, _ in changing],
        "stable": [row[base][3] for row, same in zip(rows, same_everywhere) if same],
    }
    top1 = {name: figures["top1"] for name, figures in per_channel.items()}
    worst = min(top1, key=top1.get)
    return {
        "data": source,
        "model": model,
        "runtime": runtime,
        "photos": len(rows),
        "agreement_all_channels": float(np.mean(same_everywhere)),
        "mean_top1": float(np.mean(list(top1.values()))),
        "worst_channel": worst,
        "best_minus_worst_top1": max(top1.values()) - top1[worst],
        "channels": per_channel,
        "disagreeing_classes": dict(by_class.most_common(10)),
        "disagreeing_photos": len(changing),
        "disagreeing_wrong_on_original": float(np.mean([row[base][0] != y for row, y in changing]))
        if changing
        else 0.0,
        "original_margin_median": {k: float(np.median(v)) if v else None for k, v in margins.items()},
    }


def table(result: dict) -> str:
    """The per-channel figures as a markdown table."""
    base = next(iter(result["channels"]))
    lines = [
        f"{result['model']} on {result['data']} ({result['photos']} photos, {result['runtime']}): top-1 the same on "
        f"every channel for {result['agreement_all_channels']:.2%}; worst channel {result['worst_channel']}",
        "",
        f"| channel | top-1 | agrees with {base} | input pixel diff | embedding cosine |",
        "|---|---|---|---|---|",
    ]
    for name, f in result["channels"].items():
        lines.append(
            f"| {name} | {f['top1']:.2%} | {f[f'agrees_with_{base}']:.2%} | {f['input_pixel_diff']:.2f} | "
            f"{f['embedding_cosine']:.4f} |"
        )
    if "disagreeing_photos" in result:
        m = {k: "-" if v is None else f"{v:.3f}" for k, v in result["original_margin_median"].items()}
        lines += [
            "",
            f"{result['disagreeing_photos']} photos change answer across channels; "
            f"{result['disagreeing_wrong_on_original']:.0%} of them are wrong on the original delivery; median "
            f"margin of the first product over the second on the original: {m['changing']} for them, "
            f"{m['stable']} for the others",
        ]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path, name: str, split: str) -> Path:
    return write_result(result, table(result), out, name, split)
