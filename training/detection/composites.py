"""Scenes of several products with exact boxes, composed from single-product photos.

No photo here shows several products with boxes drawn, and no detection weights can be downloaded, so the
detector learns from scenes made of what we have: product photos (each shows one product, filling most of
the frame) and the catalogue's iconic photos (one per product, on a plain white ground, so they can be cut
out), pasted at random scales and places, partly overlapping, onto backgrounds that show no product
(generated patterns, and photos blurred until nothing in them reads as a product). The same composer makes
the evaluation scenes of `seesku eval objects` from another split's photos and other seeds.

A scene is a photo at a phone's aspect ratio; what the detector sees of it is what it sees of any upload:
the whole photo squashed to its input size (`vision.detection.detector_input`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from training.open_set import KINDS, pattern

ASPECTS = ((4, 3), (3, 4), (1, 1), (16, 9), (9, 16))
WHITE_GROUND = 235  # an iconic photo's pixels brighter than this on every channel are its white ground


@dataclass
class Scene:
    image: Image.Image  # RGB
    boxes: np.ndarray  # (N, 4) x0 y0 x1 y1 in fractions of the image
    labels: list[int]  # each box's fine label (-1: unknown)


def cutout(iconic: Image.Image) -> Image.Image:
    """An iconic photo's product without its white ground, as RGBA (the alpha marks the product)."""
    rgb = np.asarray(iconic.convert("RGB"))
    product = Image.fromarray(((rgb < WHITE_GROUND).any(-1) * 255).astype(np.uint8))
    # Close small holes (white labels, highlights) and drop specks of the ground.
    alpha = product.filter(ImageFilter.MaxFilter(7)).filter(ImageFilter.MinFilter(7)).filter(ImageFilter.MinFilter(3))
    rgba = iconic.convert("RGBA")
    rgba.putalpha(alpha)
    box = alpha.getbbox()
    return rgba.crop(box) if box else rgba


def background(rng: np.random.Generator, size: tuple[int, int], photos: list[Image.Image]) -> Image.Image:
    """A ground with no product on it: a generated pattern, or a photo blurred beyond recognition."""
    w, h = size
    if photos and rng.random() < 0.5:
        photo = photos[int(rng.integers(len(photos)))]
        ground = photo.resize((w, h), Image.Resampling.BILINEAR).filter(
            ImageFilter.GaussianBlur(float(rng.uniform(0.06, 0.15)) * max(w, h))
        )
        return ImageEnhance.Brightness(ground).enhance(float(rng.uniform(0.6, 1.3)))
    side = max(w, h)
    return pattern(KINDS[int(rng.integers(len(KINDS)))], rng, side).crop((0, 0, w, h))


def _placed(rng: np.random.Generator, w: int, h: int, ow: int, oh: int, taken: list[np.ndarray], overlap: float):
    """A top-left corner for an ow x oh object whose box overlaps no placed box by more than `overlap` IoU."""
    from vision.detection import iou_matrix

    for _ in range(30):
        x, y = int(rng.integers(0, max(1, w - ow + 1))), int(rng.integers(0, max(1, h - oh + 1)))
        box = np.array([x / w, y / h, (x + ow) / w, (y + oh) / h], dtype=np.float32)
        if not taken or iou_matrix(box, np.stack(taken)).max() <= overlap:
            return x, y, box
    return None


def compose(
    rng: np.random.Generator,
    objects: list[tuple[Image.Image, int]],
    long_side: int,
    grounds: list[Image.Image],
    scale: tuple[float, float] = (0.22, 0.5),
    overlap: float = 0.1,
) -> Scene:
    """Paste `objects` ((image, label); RGBA images keep only their product) on a ground of a random phone
    aspect, each with its long side a `scale` share of the scene's long side; an object that finds no place
    overlapping the others by at most `overlap` IoU is left out."""
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    w, h = (long_side, round(long_side * ah / aw)) if aw >= ah else (round(long_side * aw / ah), long_side)
    scene = background(rng, (w, h), grounds).convert("RGB")
    boxes, labels = [], []
    for image, label in objects:
        share = float(rng.uniform(*scale)) * max(w, h)
        ratio = share / max(image.size)
        ow, oh = max(8, round(image.width * ratio)), max(8, round(image.height * ratio))
        ow, oh = min(ow, w), min(oh, h)
        spot = _placed(rng, w, h, ow, oh, boxes, overlap)
        if spot is None:
            continue
        x, y, box = spot
        pasted = image.resize((ow, oh), Image.Resampling.BILINEAR)
        scene.paste(pasted, (x, y), pasted if pasted.mode == "RGBA" else None)
        boxes.append(box)
        labels.append(label)
    return Scene(scene, np.array(boxes, dtype=np.float32).reshape(-1, 4), labels)


def photo_object(rng: np.random.Generator, photo: Image.Image, jitter: bool = True) -> Image.Image:
    """A product photo as an object: a random crop of most of it, its aspect changed a little."""
    if not jitter:
        return photo
    w, h = photo.size
    cw, ch = round(w * rng.uniform(0.75, 1.0)), round(h * rng.uniform(0.75, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = photo.crop((x, y, x + cw, y + ch))
    stretch = float(rng.uniform(0.8, 1.25))
    return out.resize((max(8, round(out.width * stretch)), out.height))


def jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class TrainingScenes:
    """An endless, seeded stream of training scenes: 0-5 products, from product photos and iconic cut-outs;
    one scene in seven is a single photo filling most of the frame (the shopper's ordinary photo, which must
    come back as one box), one in twelve has no product at all (which must come back as none)."""

    def __init__(self, photos: list[Image.Image], cutouts: list[Image.Image], long_side: int = 384):
        self.photos, self.cutouts, self.long_side = photos, cutouts, long_side

    def scene(self, seed: int) -> Scene:
        rng = np.random.default_rng(seed)
        kind = rng.random()
        if kind < 1 / 7:
            photo = self.photos[int(rng.integers(len(self.photos)))]
            return compose(rng, [(photo_object(rng, photo), -1)], self.long_side, self.photos, scale=(0.8, 1.0))
        count = 0 if kind < 1 / 7 + 1 / 12 else int(rng.integers(1, 6))
        objects = []
        for _ in range(count):
            if self.cutouts and rng.random() < 0.3:
                cut = self.cutouts[int(rng.integers(len(self.cutouts)))]
                objects.append((cut.rotate(float(rng.uniform(-25, 25)), expand=True), -1))
            else:
                objects.append((photo_object(rng, self.photos[int(rng.integers(len(self.photos)))]), -1))
        scene = compose(rng, objects, self.long_side, self.photos, scale=(0.18, 0.55), overlap=0.2)
        if rng.random() < 0.5:  # what phones and apps do to a photo on the way
            scene.image = Image.open(io.BytesIO(jpeg(scene.image, int(rng.integers(40, 95))))).convert("RGB")
        return scene


def evaluation_scenes(
    photos: list[tuple[Image.Image, int]], count: int, seed: int, long_side: int = 1024
) -> list[Scene]:
    """`count` scenes of 2-5 different products from `photos` ((photo, fine label)), each photo pasted whole
    (a product photo is the product), a phone photo's size; the same seed gives the same scenes."""
    rng = np.random.default_rng(seed)
    grounds = [p for p, _ in photos]
    by_label: dict[int, list[Image.Image]] = {}
    for photo, label in photos:
        by_label.setdefault(label, []).append(photo)
    labels = sorted(by_label)
    scenes = []
    while len(scenes) < count:
        chosen = rng.choice(labels, size=min(len(labels), int(rng.integers(2, 6))), replace=False)
        objects = [(by_label[c][int(rng.integers(len(by_label[c])))], int(c)) for c in chosen]
        scene = compose(rng, objects, long_side, grounds, scale=(0.25, 0.45), overlap=0.05)
        if len(scene.labels) >= 2:
            scenes.append(scene)
    return scenes


def catalogue_scene(catalog_csv: Path, count: int, seed: int, long_side: int = 1024) -> tuple[Scene, list[str]]:
    """A basket photo of `count` different products of a catalogue CSV (each one's second photo, a shopper's
    photo rather than the iconic one) and their product ids, in the order of the scene's boxes; for tests,
    benchmarks and demonstrations."""
    rows = list(csv.DictReader(open(catalog_csv)))
    chosen = np.random.default_rng(seed).choice(len(rows), size=count, replace=False)
    photos = []
    for label, i in enumerate(chosen):
        images = rows[i]["images"].split(";")
        photos.append((Image.open(catalog_csv.parent / images[min(1, len(images) - 1)]).convert("RGB"), label))
    while True:
        scene = evaluation_scenes(photos, 1, seed, long_side)[0]
        if len(scene.labels) == count:
            return scene, [rows[chosen[label]]["product_id"] for label in scene.labels]
        seed += 1000
