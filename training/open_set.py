"""`seesku eval open-set`: calibrate and measure `matched` (vision/match_rule.py) on photos the catalogue
cannot answer.

Three kinds of photo, all searched through the service (passed in: training/ does not import it):
- in the catalogue: the split's photos, against the sample catalogue; the positives are those whose top
  product is right (the rule must not reject those: the issue allows 5 %);
- removed from the catalogue: the same photos with their own product taken out, so the top product is the
  best *other* product (ranking scores each product on its own, so this is what the catalogue without it
  answers);
- no product at all: pictures generated here, seeded (stripes, checkers, gradients, noise, shapes, solid
  colours, blurred noise, lines), so nothing is downloaded and no licence applies; val and test use
  different seeds.

On val the threshold is put at the 97.5th percentile of the negatives' confidences: the served model was
fit on train + val, so val's positives sit higher than unseen photos would, and the cut is set by what
must be rejected, with a margin over the 90 % the issue asks. Or it is given (`--threshold`): the point a
train-only model of the same recipe reached on val, where val photos are unseen as they will be in use.
Other splits are measured with the model's stored rule, never calibrated on.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.channels import SearchService
from training.data import load_photos
from vision.match_rule import MatchRule, match_confidence
from vision.preprocess import load_image

NEGATIVE_QUANTILE = 97.5
SEEDS = {"val": 1, "test": 2, "train": 3}
KINDS = ("stripes", "checker", "gradient", "noise", "shapes", "solid", "blurred_noise", "lines")


def pattern(kind: str, rng: np.random.Generator, size: int) -> Image.Image:
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    y, x = np.mgrid[:size, :size]
    if kind == "stripes":
        angle, width = rng.uniform(0, np.pi), int(rng.integers(6, 60))
        arr = np.where(((x * np.cos(angle) + y * np.sin(angle)) // width % 2)[..., None] == 1, c1, c2)
    elif kind == "checker":
        width = int(rng.integers(8, 80))
        arr = np.where(((x // width + y // width) % 2)[..., None] == 1, c1, c2)
    elif kind == "gradient":
        t = (x / size)[..., None]
        arr = c1 * (1 - t) + c2 * t
    elif kind == "noise":
        arr = rng.integers(0, 256, (size, size, 3))
    elif kind == "solid":
        arr = c1 + rng.normal(0, 4, (size, size, 3))
    elif kind == "blurred_noise":
        noise = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        arr = np.asarray(noise.filter(ImageFilter.GaussianBlur(float(rng.uniform(3, 15)))), dtype=float)
        arr = (arr - arr.mean()) * 4 + 128
    else:  # shapes, lines
        im = Image.new("RGB", (size, size), tuple(int(v) for v in c2))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 12))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            x0, y0 = (int(v) for v in rng.integers(0, size, 2))
            x1, y1 = x0 + int(rng.integers(10, 200)), y0 + int(rng.integers(10, 200))
            if kind == "lines":
                draw.line([x0, y0, x1, y0], fill=colour, width=int(rng.integers(2, 10)))
            else:
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        return im
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def non_product_photos(count: int, seed: int, size: int = 348) -> list[tuple[str, bytes]]:
    """(kind, JPEG bytes) of `count` generated pictures of no product, the kinds in turn."""
    rng = np.random.default_rng(seed)
    photos = []
    for i in range(count):
        buf = io.BytesIO()
        pattern(KINDS[i % len(KINDS)], rng, size).save(buf, "JPEG", quality=90)
        photos.append((KINDS[i % len(KINDS)], buf.getvalue()))
    return photos


def _confidence(service: SearchService, match, fine_probs) -> float:
    return match_confidence(match.visual_score, service.ranking.category_probability(match.product, fine_probs))


def collect(
    data: Path, split: str, service: SearchService, non_products: int, log: Callable[[str], None] = print
) -> list[tuple[str, bool, float]]:
    """(kind, correct, confidence) of every searched photo: 'in', 'removed' or 'non_product:<pattern>'."""
    photos = load_photos(data, split)
    rows = []
    for i, photo in enumerate(photos.photos):
        truth = photos.fine_labels[photo.fine]
        pixels = load_image(photo.path.read_bytes(), service.spec, service.limits)
        out = service.embedder.embed(pixels[None])
        ranked = service.ranking.rank(out.embedding[0], out.fine_probs[0], 10)
        rows.append(("in", ranked[0].product.product_id == truth, _confidence(service, ranked[0], out.fine_probs[0])))
        rest = [m for m in ranked if m.product.product_id != truth]
        rows.append(("removed", False, _confidence(service, rest[0], out.fine_probs[0])))
        if (i + 1) % 100 == 0:
            log(f"{i + 1} / {len(photos)} {split} photos")
    for kind, image in non_product_photos(non_products, SEEDS.get(split, 0)):
        out = service.embedder.embed(load_image(image, service.spec, service.limits)[None])
        ranked = service.ranking.rank(out.embedding[0], out.fine_probs[0], 1)
        rows.append((f"non_product:{kind}", False, _confidence(service, ranked[0], out.fine_probs[0])))
    return rows


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a positive's confidence > a negative's), ties counting half."""
    greater = (positives[:, None] > negatives[None, :]).mean()
    return float(greater + 0.5 * (positives[:, None] == negatives[None, :]).mean())


def figures(rows: list[tuple[str, bool, float]], threshold: float) -> dict:
    positives = np.array([c for kind, ok, c in rows if kind == "in" and ok])
    negatives = np.array([c for kind, ok, c in rows if kind != "in"])
    kinds = sorted({kind.split(":")[0] for kind, _, _ in rows if kind != "in"})
    in_catalogue = [(ok, c) for kind, ok, c in rows if kind == "in"]
    return {
        "threshold": threshold,
        "auroc": auroc(positives, negatives),
        "correct_in_catalogue_unmatched": float(np.mean(positives < threshold)),
        "out_of_catalogue_unmatched": float(np.mean(negatives < threshold)),
        "unmatched_by_kind": {
            k: float(np.mean([c < threshold for kind, _, c in rows if kind.split(":")[0] == k])) for k in kinds
        },
        "wrong_in_catalogue_unmatched": float(np.mean(wrong))
        if (wrong := [c < threshold for ok, c in in_catalogue if not ok])
        else None,
        "counts": {"correct_in_catalogue": len(positives), "out_of_catalogue": len(negatives)},
        "operating_points": operating_points(positives, negatives),
    }


def operating_points(positives: np.ndarray, negatives: np.ndarray) -> dict:
    """The two ends of the trade-off the issue sets (>= 90 % of out-of-catalogue photos unmatched, <= 5 % of
    correct answers unmatched): what each costs of the other, at the threshold that just meets it."""
    at_negatives = float(np.percentile(negatives, 90))
    at_positives = float(np.percentile(positives, 5))
    return {
        "90pct_out_of_catalogue_unmatched": {
            "threshold": at_negatives,
            "correct_in_catalogue_unmatched": float(np.mean(positives < at_negatives)),
        },
        "5pct_correct_unmatched": {
            "threshold": at_positives,
            "out_of_catalogue_unmatched": float(np.mean(negatives < at_positives)),
        },
    }


def calibrate(rows: list[tuple[str, bool, float]]) -> float:
    return float(np.percentile([c for kind, _, c in rows if kind != "in"], NEGATIVE_QUANTILE))


def evaluate_open_set(
    data: Path,
    split: str,
    service: SearchService,
    rule: MatchRule,
    non_products: int = 160,
    log=print,
    threshold: float | None = None,
) -> tuple[dict, float]:
    """The figures on `split` and the threshold they are measured at: on val the given `threshold` (one
    calibrated on unseen photos, for a final fit whose val is memorised) or else one calibrated here; the
    stored rule's on other splits."""
    if threshold is not None and split != "val":
        raise ValueError("a threshold is set on val only; other splits measure the model's stored rule")
    rows = collect(data, split, service, non_products, log)
    if split == "val":
        threshold = calibrate(rows) if threshold is None else threshold
    else:
        threshold = rule.threshold
    return {"split": split, "model": service.model_id, **figures(rows, threshold)}, threshold
