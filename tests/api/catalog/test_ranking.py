"""The ranking rule (api/catalog/ranking.py): visual similarity, the category heads and the shopper model
together, one rule for search, tagging's catalogue matches and the recommendations."""

import numpy as np
import pytest

from api.catalog.ranking import softmax_shares
from api.catalog.service import CatalogService
from tests.api.catalog.conftest import photo, product
from tests.conftest import make_settings
from vision.preprocess import load_image


def _fused_setup(service, fine_known: str):
    """Two products with the same photo distance; only one has a category the heads know."""
    service.put_product(product("known", fine=fine_known), [photo(3)])
    service.put_product(product("unknown", fine="Added-After-Training"), [photo(3)])
    return service.prepare([photo(3)])[0][0]


def test_rank_adds_head_probability_to_visual_score(service):
    label = service.manifest.fine_labels[0]
    prepared = _fused_setup(service, label)
    probs = np.zeros(len(service.manifest.fine_labels), dtype=np.float32)
    probs[0] = 0.8
    matches = service.ranking.rank(prepared.embedding, probs, 2)
    assert [m.product.product_id for m in matches] == ["known", "unknown"]
    known, unknown = matches
    assert known.category_probability == pytest.approx(0.8)
    assert known.score == pytest.approx(known.visual_score + service.settings.head_weight * 0.8)
    # A product the heads have never seen ranks by its embedding alone.
    assert unknown.category_probability is None and unknown.score == pytest.approx(unknown.visual_score)


def test_rank_with_zero_head_weight_is_the_visual_order(tmp_path):
    svc = CatalogService(make_settings(tmp_path, load_samples=False, head_weight=0.0))
    svc.open()
    try:
        label = svc.manifest.fine_labels[0]
        svc.put_product(product("far", fine=label), [photo(40)])
        svc.put_product(product("near", fine="Other"), [photo(3)])
        query = svc.prepare([photo(3)])[0][0].embedding
        probs = np.zeros(len(svc.manifest.fine_labels), dtype=np.float32)
        probs[0] = 1.0
        assert [m.product.product_id for m in svc.ranking.rank(query, probs, 2)] == ["near", "far"]
    finally:
        svc.store.close()


def test_confident_category_surfaces_a_product_outside_the_visual_shortlist(tmp_path):
    svc = CatalogService(make_settings(tmp_path, load_samples=False, head_weight=2.0, index_save_interval_s=3600))
    svc.open()
    try:
        label = svc.manifest.fine_labels[0]
        for i in range(40):  # 40 products nearer to the query than the target: more than the short-list of 32
            svc.put_product(product(f"p{i}", fine="Other"), [photo(3 + (i % 5))])
        svc.put_product(product("target", fine=label), [photo(60)])
        query = svc.prepare([photo(3)])[0][0].embedding
        assert "target" not in [m.product.product_id for m in svc.ranking.nearest_products(query, 32)]
        probs = np.zeros(len(svc.manifest.fine_labels), dtype=np.float32)
        probs[0] = 1.0
        assert [m.product.product_id for m in svc.ranking.rank(query, probs, 1)] == ["target"]
    finally:
        svc.store.close()


def test_tagging_matches_are_the_search_ranking(service):
    """Bulk tagging's catalogue matcher is the search rule itself: same products, same scores, same order."""
    label = service.manifest.fine_labels[0]
    for i, fine in enumerate([label, "Other", label]):
        service.put_product(product(f"p{i}", fine=fine), [photo(3 + i)])
    query = service.prepare([photo(4)])[0][0].embedding
    probs = np.zeros(len(service.manifest.fine_labels), dtype=np.float32)
    probs[0] = 0.6
    ranked = service.ranking.rank(query, probs, 3)
    assert service.tag_matcher()(query, probs, 3).matches == [(m.product.product_id, m.score) for m in ranked]
    # and a search of a photo ranks, and judges its first match, by the same rule over the model's outputs
    out = service.embedder.embed(load_image(photo(4).data, service.spec)[None])
    expected = service.tag_matcher()(out.embedding[0], out.fine_probs[0], 3)
    result = service.search(photo(4).data, k=3)
    assert [m.product.product_id for m in result.matches] == [pid for pid, _ in expected.matches]
    assert [m.score for m in result.matches] == pytest.approx([score for _, score in expected.matches], abs=1e-5)
    assert (result.matched, result.match_confidence) == pytest.approx((expected.matched, expected.confidence), abs=1e-5)
    assert service.tag_matcher()(out.embedding[0], out.fine_probs[0], 0).matches == []  # k=0: judged, not listed


def test_personal_scores_reorder_by_their_share_among_the_candidates(service):
    service.put_product(product("a"), [photo(3)])
    service.put_product(product("b"), [photo(3)])
    query = service.prepare([photo(3)])[0][0].embedding
    probs = np.zeros(len(service.manifest.fine_labels), dtype=np.float32)
    visual = service.ranking.rank(query, probs, 2)
    assert visual[0].personal_score is None
    liked = visual[1].product.product_id
    personal = {liked: 5.0, visual[0].product.product_id: 0.0}
    ranked = service.ranking.rank(query, probs, 2, personal=personal, personal_weight=0.5)
    assert ranked[0].product.product_id == liked
    share = softmax_shares([5.0, 0.0])[0]
    assert ranked[0].personal_score == pytest.approx(share)
    assert ranked[0].score == pytest.approx(ranked[0].visual_score + 0.5 * share)


def test_recommendations_rank_the_catalogue_by_share_and_fall_back_to_popularity(service):
    from vision.recommender import Event

    for pid in ("a", "b", "c"):
        service.put_product(product(pid), [photo(3)])
    products = {p.product_id: p for p in service.store.all_products()}
    assert service.ranking.recommend({"a": 1.0, "b": 3.0, "gone": 9.0}, products, 2)[0][0] == "b"
    assert service.ranking.recommend({}, products, 2) == []
    service.store.add_events(
        [
            Event("u", "c", "view", "app", 1.0, "e1"),
            Event("u", "c", "view", "web", 2.0, "e2"),
            Event("u", "a", "view", "web", 3.0, "e3"),
        ]
    )
    assert service.ranking.popular(2) == [("c", pytest.approx(2 / 3)), ("a", pytest.approx(1 / 3))]
