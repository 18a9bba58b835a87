"""Personal re-ranking on real shopper photos: top-1 with fusion against visual alone, and its latency cost.

    python bench/fusion.py --data ../shared/data/grocery_store [--photos-per-class 8]

Simulated shoppers: for a Grocery Store *test* photo of product X, a shopper whose history prefers X within
its shelf (repeat purchases of X on several channels, plus some unrelated browsing). The photo is searched
with that shopper's history (personal_weight from settings) and without (visual order), in-process.
- ambiguous photos: X shares its shelf with other products (e.g. six cow's milks, oat and soy milk);
- unambiguous photos: X is alone on its shelf; fusion must not hurt them.
A third group, misleading histories (the shopper prefers ANOTHER product of X's shelf), shows the price
of personalisation when the taste does not match the photo. 95 % intervals: paired bootstrap.
Latency: median in-process `search` time with a known shopper vs without, interleaved.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, emit

sys.path.insert(0, str(ROOT / "scripts"))
from make_events import SHELVES  # noqa: E402  the synthetic shoppers' shelves

from api.app import start_shoppers  # noqa: E402
from api.catalog.csv_io import import_catalog_csv  # noqa: E402
from api.catalog.service import CatalogService  # noqa: E402
from api.routers.search import SearchParams, run_search  # noqa: E402
from api.settings import Settings  # noqa: E402
from training.data import load_photos  # noqa: E402
from vision.preprocess import load_image  # noqa: E402
from vision.recommender import Event  # noqa: E402


def history_for(product: str, others: list[str], rng: random.Random) -> list[Event]:
    events, ts = [], 1.0
    for _ in range(rng.randint(5, 9)):
        if rng.random() < 0.7:
            events.append(
                Event("sim", product, rng.choice(["purchase", "cart", "view"]), rng.choice(["app", "web", "kiosk"]), ts)
            )
        else:
            events.append(Event("sim", rng.choice(others), "view", rng.choice(["app", "web"]), ts))
        ts += 3600
    return events


def bootstrap_gain(fused: np.ndarray, visual: np.ndarray, rounds: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    diffs = fused.astype(float) - visual.astype(float)
    means = [diffs[rng.integers(0, len(diffs), len(diffs))].mean() for _ in range(rounds)]
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def search_latency(service, shoppers, chosen, products, rng) -> dict[str, float]:
    """The same photos searched by a shopper with history and by none, interleaved."""
    shopper = history_for("Oatly-Oat-Milk", list(products), rng)
    shoppers.add_events(
        [Event("bench-shopper", e.product_id, e.type, e.channel, e.ts, f"b{i}") for i, e in enumerate(shopper)]
    )
    photos = [p.path.read_bytes() for p in chosen[:20]]
    plain, personal = [], []
    for _ in range(5):
        for data in photos:
            t = time.perf_counter()
            run_search(service, shoppers, data, SearchParams(k=10))
            plain.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            run_search(service, shoppers, data, SearchParams(k=10, user_id="bench-shopper"))
            personal.append((time.perf_counter() - t) * 1e3)
    return {
        "search_p50": round(statistics.median(plain), 2),
        "search_with_shopper_p50": round(statistics.median(personal), 2),
        "added_by_fusion_p50": round(statistics.median(personal) - statistics.median(plain), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery_store")
    parser.add_argument("--photos-per-class", type=int, default=8)
    args = parser.parse_args()
    rng = random.Random(0)

    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="seesku-fusion-")))
    service = CatalogService(settings)
    service.open()
    import_catalog_csv(service, settings.sample_catalog)
    shoppers = start_shoppers(settings, service)
    if shoppers.scorer is None:
        raise SystemExit("no shopper model at SEESKU_RECOMMENDER_DIR")
    products = {p.product_id: p for p, _ in service.list_products(None, None, 10_000)}
    shelf_of = {pid: SHELVES.get(p.coarse_category, p.coarse_category) for pid, p in products.items()}
    shelves: dict[str, list[str]] = {}
    for pid, shelf in shelf_of.items():
        shelves.setdefault(shelf, []).append(pid)

    test = load_photos(args.data, "test")
    per_class: dict[int, list] = {}
    for photo in test.photos:
        per_class.setdefault(photo.fine, []).append(photo)
    chosen = [p for photos in per_class.values() for p in photos[: args.photos_per_class]]

    groups = {"ambiguous": ([], []), "unambiguous": ([], []), "misleading": ([], [])}
    for photo in chosen:
        product = test.fine_labels[photo.fine]
        if product not in products:
            continue
        data = photo.path.read_bytes()
        out = service.embedder.embed(load_image(data, service.spec)[None])
        visual = service.ranking.rank(out.embedding[0], out.fine_probs[0], 1)[0].product.product_id == product
        neighbours = [p for p in shelves[shelf_of[product]] if p != product]
        others = [p for p in products if shelf_of[p] != shelf_of[product]]
        cases = [("ambiguous" if neighbours else "unambiguous", product)]
        if neighbours:
            cases.append(("misleading", rng.choice(neighbours)))
        for group, preferred in cases:
            history = history_for(preferred, others, rng)
            scores = shoppers.scorer.scores(history)
            fused = service.ranking.rank(out.embedding[0], out.fine_probs[0], 1, None, scores, settings.personal_weight)
            groups[group][0].append(fused[0].product.product_id == product)
            groups[group][1].append(visual)

    result = {
        "bench": "fusion",
        "personal_weight": settings.personal_weight,
        "model": service.model_id,
        "shopper_model": shoppers.scorer.manifest.model_id,
        "photos": len(chosen),
    }
    for group, (fused, visual) in groups.items():
        fused, visual = np.array(fused), np.array(visual)
        result[group] = {
            "photos": int(len(fused)),
            "top1_visual": round(float(visual.mean()), 4) if len(visual) else None,
            "top1_fused": round(float(fused.mean()), 4) if len(fused) else None,
            "gain": round(float(fused.mean() - visual.mean()), 4) if len(fused) else None,
            "gain_95ci": bootstrap_gain(fused, visual) if len(fused) else None,
        }

    result["latency_ms"] = search_latency(service, shoppers, chosen, products, rng)
    service.close()
    emit(result)


if __name__ == "__main__":
    main()
