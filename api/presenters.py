"""Answers as clients see them, built once for the routers and the CLI alike."""

from __future__ import annotations

from datetime import UTC, datetime

from api.catalog.objects import FoundObject
from api.catalog.ranking import Match
from api.catalog.records import ImageRecord, Product
from api.catalog.service import SearchResult
from api.schemas import CategoryRef, HistoryEvent, ImageOut, ProductOut, Recommendation, Recommendations
from api.shoppers import Recommendations as Recommended
from vision.manifest import ModelManifest
from vision.recommender import Event


def image_urls(product_id: str, image_id: int) -> tuple[str, str]:
    url = f"/v1/products/{product_id}/images/{image_id}"
    return url, f"{url}/thumbnail"


def image_out(im: ImageRecord) -> ImageOut:
    url, thumb = image_urls(im.product_id, im.image_id)
    return ImageOut(
        image_id=im.image_id,
        url=url,
        thumbnail_url=thumb,
        content_type=im.content_type,
        width=im.width,
        height=im.height,
        bytes=im.bytes,
        created_at=im.created_at,
    )


def product_out(p: Product, images: list[ImageRecord]) -> ProductOut:
    return ProductOut(
        product_id=p.product_id,
        name=p.name,
        fine_category=p.fine_category,
        coarse_category=p.coarse_category,
        description=p.description,
        attributes=p.attributes,
        images=[image_out(i) for i in images],
        created_at=p.created_at,
        updated_at=p.updated_at,
    )


def _rounded(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def _matches_out(matches: list[Match]) -> list[dict]:
    out = []
    for m in matches:
        url, thumb = image_urls(m.product.product_id, m.image_id)
        out.append(
            {
                "product_id": m.product.product_id,
                "name": m.product.name,
                "category": {"fine": m.product.fine_category, "coarse": m.product.coarse_category},
                "score": _rounded(m.score),
                "visual_score": _rounded(m.visual_score),
                "category_probability": _rounded(m.category_probability),
                "personal_score": _rounded(m.personal_score),
                "image_url": url,
                "thumbnail_url": thumb,
            }
        )
    return out


def _categories_out(fine: list[tuple[str, float]], coarse: list[tuple[str, float]]) -> dict:
    return {
        level: [{"name": n, "probability": _rounded(p)} for n, p in scores]
        for level, scores in (("fine", fine), ("coarse", coarse))
    }


def _object_out(found: FoundObject) -> dict:
    box = found.box
    return {
        "box": {"x0": _rounded(box.x0), "y0": _rounded(box.y0), "x1": _rounded(box.x1), "y1": _rounded(box.y1)},
        "score": _rounded(box.score),
        "matched": found.matched,
        "match_confidence": _rounded(found.match_confidence),
        "matches": _matches_out(found.matches),
        "categories": _categories_out(found.fine, found.coarse),
    }


def search_answer(result: SearchResult, manifest: ModelManifest, channel: str) -> dict:
    """The search's answer as plain JSON values, in the shape of SearchResponse (the documented contract;
    tests validate answers against it). Built directly rather than as SearchResponse: every value comes
    from the service, and validating them one by one again (35 pydantic validations) was the largest Python
    cost left on the event loop. `objects` and `detector` only when the search asked for objects."""
    answer = {
        "matched": result.matched,
        "match_confidence": _rounded(result.match_confidence),
        "matches": _matches_out(result.matches),
        "categories": _categories_out(result.fine, result.coarse),
        "timings_ms": {k: _rounded(v, 3) for k, v in result.timings_ms.items()},
        "model": {"id": manifest.model_id, "version": manifest.version},
        "personal_model": result.personal_model,
        "channel": channel,
    }
    if result.objects is not None:
        answer["objects"] = [_object_out(o) for o in result.objects]
        answer["detector"] = result.detector
    return answer


def history_event(e: Event) -> HistoryEvent:
    return HistoryEvent(
        product_id=e.product_id,
        type=e.type,
        channel=e.channel,
        timestamp=datetime.fromtimestamp(e.ts, UTC),
        event_id=e.event_id,
    )


def recommendations_out(user_id: str, found: Recommended) -> Recommendations:
    items = [
        Recommendation(
            product_id=r.product.product_id,
            name=r.product.name,
            category=CategoryRef(fine=r.product.fine_category, coarse=r.product.coarse_category),
            score=round(r.score, 6),
            thumbnail_url=image_urls(r.product.product_id, r.first_image.image_id)[1] if r.first_image else None,
        )
        for r in found.items
    ]
    return Recommendations(user_id=user_id, source=found.source, model=found.model, recommendations=items)
