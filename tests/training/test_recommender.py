"""Shopper events, merged histories, recommendations, personal re-ranking, and the recommender itself."""

import json

import numpy as np
import pytest
import torch

from api.settings import REPO_ROOT
from tests.conftest import SAMPLES
from training.recommender.config import RecommenderConfig
from training.recommender.data import Sequences
from training.recommender.evaluate import evaluate
from training.recommender.train import contrastive_loss, train, training_batch
from vision.recommender import RecommenderManifest
from vision.runtimes.onnx import OnnxShopperScorer

RECOMMENDER = REPO_ROOT / "triton_models" / "user_recommender"
MILK_PHOTO = SAMPLES / "queries" / "Garant-Ecological-Standard-Milk_004.jpg"


def event(user, product, ts, channel="app", kind="purchase", event_id=None):
    e = {"user_id": user, "product_id": product, "type": kind, "channel": channel, "timestamp": ts}
    if event_id:
        e["event_id"] = event_id
    return e


def post(client, events):
    return client.post("/v1/events", json={"events": events})


# -- events API -------------------------------------------------------------------------------------


def test_events_are_stored_once_and_merged_across_channels(sample_client):
    events = [
        event("t-merge", "Banana", "2026-10-02T10:00:00Z", "web", "view", "m1"),
        event("t-merge", "Oatly-Oat-Milk", "2026-10-01T09:00:00Z", "kiosk", "purchase", "m2"),
        event("t-merge", "Granny-Smith", "2026-10-03T08:00:00+02:00", "app", "cart", "m3"),
    ]
    assert post(sample_client, events).json() == {"accepted": 3, "duplicates": 0}
    assert post(sample_client, events[:2]).json() == {"accepted": 0, "duplicates": 2}  # same event_ids: ignored
    history = sample_client.get("/v1/users/t-merge/history").json()["events"]
    assert [e["product_id"] for e in history] == ["Oatly-Oat-Milk", "Banana", "Granny-Smith"]  # time order
    assert [e["channel"] for e in history] == ["kiosk", "web", "app"]


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"type": "stare"}, ["body", "events", 1, "type"]),
        ({"channel": "fax"}, ["body", "events", 1, "channel"]),
        ({"timestamp": "yesterday"}, ["body", "events", 1, "timestamp"]),
        ({"user_id": ""}, ["body", "events", 1, "user_id"]),
        ({"colour": "red"}, ["body", "events", 1, "colour"]),
    ],
)
def test_bad_event_fields_name_the_event(sample_client, bad, where):
    events = [
        event("t-bad", "Banana", "2026-10-01T00:00:00Z"),
        {**event("t-bad", "Banana", "2026-10-01T00:00:00Z"), **bad},
    ]
    resp = post(sample_client, events)
    assert resp.status_code == 422
    assert any(d["loc"] == where for d in resp.json()["error"]["details"])
    assert sample_client.get("/v1/users/t-bad/history").json()["events"] == []  # nothing stored


def test_unknown_product_is_refused_naming_the_event(sample_client):
    events = [
        event("t-unknown", "Banana", "2026-10-01T00:00:00Z"),
        event("t-unknown", "No-Such-Thing", "2026-10-01T00:01:00Z"),
    ]
    resp = post(sample_client, events)
    assert resp.status_code == 422
    body = resp.json()["error"]
    assert body["code"] == "unknown_product" and body["details"] == [{"event": 1, "product_id": "No-Such-Thing"}]
    assert sample_client.get("/v1/users/t-unknown/history").json()["events"] == []


def test_empty_batch_is_refused(sample_client):
    assert post(sample_client, []).status_code == 422


# -- recommendations and fusion -------------------------------------------------------------------------


def oat_milk_buyer(client, user):
    events = [
        event(
            user,
            "Oatly-Oat-Milk",
            f"2026-10-{d:02d}T09:00:00Z",
            ["app", "web", "kiosk"][d % 3],
            "purchase",
            f"{user}-{d}",
        )
        for d in range(1, 9)
    ]
    assert post(client, events).status_code == 200


def test_recommendations_from_history_and_popular_without(sample_client):
    oat_milk_buyer(sample_client, "t-reco")
    body = sample_client.get("/v1/users/t-reco/recommendations", params={"k": 5}).json()
    assert body["source"] == "model" and body["model"].startswith("seesku-sequence-recommender")
    assert len(body["recommendations"]) == 5
    scores = [r["score"] for r in body["recommendations"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert "Oatly-Oat-Milk" in [r["product_id"] for r in body["recommendations"]]
    nobody = sample_client.get("/v1/users/t-nobody/recommendations", params={"k": 3}).json()
    assert nobody["source"] == "popular" and len(nobody["recommendations"]) == 3


def search(client, answer=False, **params):
    resp = client.post(
        "/v1/search",
        params={"k": 10, **params},
        content=MILK_PHOTO.read_bytes(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert resp.status_code == 200, resp.text
    return resp.json() if answer else resp.json()["matches"]


def test_personal_reranking_with_a_fixed_history(sample_client):
    oat_milk_buyer(sample_client, "t-fusion")
    visual = search(sample_client)
    assert all(m["personal_score"] is None for m in visual)
    personal = search(sample_client, user_id="t-fusion", personal_weight=5)
    assert personal[0]["product_id"] == "Oatly-Oat-Milk"  # the oat-milk buyer sees oat milk first
    assert personal[0]["personal_score"] == max(m["personal_score"] for m in personal)
    for m in personal:
        assert m["score"] == pytest.approx(
            m["visual_score"] + 0.5 * (m["category_probability"] or 0) + 5 * m["personal_score"], abs=1e-4
        )
    # weight 0 and shoppers without history get the visual order
    assert [m["product_id"] for m in search(sample_client, user_id="t-fusion", personal_weight=0)] == [
        m["product_id"] for m in visual
    ]
    no_history = search(sample_client, user_id="t-never-seen")
    assert [m["product_id"] for m in no_history] == [m["product_id"] for m in visual]
    assert all(m["personal_score"] is None for m in no_history)
    # the answer names the shopper model version that re-ranked it, and none when none did
    named = search(sample_client, answer=True, user_id="t-fusion", personal_weight=5)["personal_model"]
    assert named == sample_client.app.state.shoppers.model_id and named.count(":") == 1
    assert search(sample_client, answer=True, user_id="t-never-seen")["personal_model"] is None


def test_bad_personal_weight(sample_client):
    resp = sample_client.post(
        "/v1/search",
        params={"personal_weight": -1},
        content=MILK_PHOTO.read_bytes(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert resp.status_code == 422


# -- the shipped shopper model ---------------------------------------------------------------------------


def test_shipped_recommender_manifest_and_graph():
    manifest = RecommenderManifest.load(RECOMMENDER)
    assert manifest.metrics["parity_min_correlation"] >= 0.9999
    config = (RECOMMENDER / "config.pbtxt").read_text()
    assert f"dims: [ -1, {len(manifest.vocabulary) + 1} ]" in config and f"dims: [ -1, {manifest.dim} ]" in config
    model = OnnxShopperScorer(RECOMMENDER)
    from vision.recommender import Event

    scores = model.scores([Event("u", "Banana", "view", "app", 1.0)] * 3)
    assert set(scores) == set(manifest.vocabulary) and all(np.isfinite(list(scores.values())))
    assert model.scores([Event("u", "Not-In-Vocabulary", "view", "app", 1.0)]) == {}


# -- training and evaluation --------------------------------------------------------------------------


def planted_sequences(users=300, items=30, seed=0) -> Sequences:
    """Each item is always followed by the next one (mod items): a pattern with one right answer."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(users):
        start, length = rng.integers(0, items), rng.integers(5, 12)
        seqs.append(np.array([(start + i) % items + 1 for i in range(length)], dtype=np.int64))
    return Sequences(seqs, items)


def planted_config(tmp_path, **changes) -> RecommenderConfig:
    """A small, quick run on the planted pattern; `changes` are the settings a test is about."""
    settings = dict(dim=32, blocks=1, heads=2, dropout=0.0, epochs=30, batch=64, lr=3e-3, eval_every=5, patience=3)
    return RecommenderConfig(data="planted", out=str(tmp_path / "run"), threads=2, **{**settings, **changes})


def test_model_learns_a_planted_sequence_pattern(tmp_path):
    seqs = planted_sequences()
    config = planted_config(tmp_path, head="mlp", loss="ce")
    best = train(config, seqs, log=lambda m: None)
    from training.recommender.model import load

    model, _ = load(best)
    metrics = evaluate(model, seqs, "test")
    assert metrics["hr@5"] > 0.9 and metrics["ndcg@10"] > 0.8
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_contrastive_regulariser_trains_with_the_planted_pattern(tmp_path):
    config = planted_config(tmp_path, head="mlp", loss="ce", dropout=0.1, cl_weight=0.1)
    from training.recommender.model import load

    model, _ = load(train(config, planted_sequences(), log=lambda m: None))
    assert evaluate(model, planted_sequences(), "test")["hr@5"] > 0.9


def test_contrastive_loss_on_a_known_case():
    g = torch.Generator().manual_seed(0)
    # Two positions, orthogonal unit vectors, identical views, different next items. Row 0 of the 4x4
    # similarity matrix (temperature 1): itself (masked), its other view e1.e1 = 1, and two negatives e1.e2 = 0.
    views = torch.eye(2)
    expected = float(np.log((np.e + 2) / np.e))
    assert contrastive_loss(views, views, torch.tensor([1, 2]), 1.0, g).item() == pytest.approx(expected)
    # Same next item: the other position is its positive (supervised view), never its negative, so the loss
    # is that of a pair of positions with nothing to push away: zero.
    same = contrastive_loss(torch.eye(2), torch.eye(2), torch.tensor([3, 3]), 1.0, g)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_refit_trains_through_the_validation_item_never_the_test_item():
    seqs = Sequences([np.array([1, 2, 3, 4, 5])], 5)
    x, _, _, y = training_batch(seqs, [0], max_len=10)  # the validation item (4) and test item (5) held out
    assert x.tolist() == [[1, 2]] and y.tolist() == [[2, 3]]
    x, _, _, y = training_batch(seqs, [0], max_len=10, held_out=1)  # the refit: only the test item held out
    assert x.tolist() == [[1, 2, 3]] and y.tolist() == [[2, 3, 4]]


def test_refit_keeps_its_last_epoch(tmp_path):
    config = RecommenderConfig(
        data="planted",
        out=str(tmp_path / "run"),
        dim=16,
        blocks=1,
        dropout=0.0,
        epochs=3,
        batch=64,
        threads=2,
        fit_through="val",
    )
    best = train(config, planted_sequences(users=50), log=lambda m: None)
    state = torch.load(best, weights_only=False)
    assert state["epoch"] == 2 and not any(k.startswith("val_") for r in state["history"] for k in r)
    # its validation score would be a score on training data: the eval command refuses it
    from typer.testing import CliRunner

    from api.cli import app

    data = tmp_path / "planted.txt"
    data.write_text("".join(f"{u} {' '.join(map(str, s))}\n" for u, s in enumerate(planted_sequences(users=50).items)))
    refused = CliRunner().invoke(
        app, ["eval", "recommender", "--data", str(data), "--model", str(best), "--split", "val"]
    )
    assert refused.exit_code == 2 and "refit" in refused.output
    # the same checkpoint twice is an ensemble of two identical members: the same metrics as one
    one = CliRunner().invoke(app, ["eval", "recommender", "--data", str(data), "--model", str(best), "--json"])
    two = CliRunner().invoke(
        app, ["eval", "recommender", "--data", str(data), "--model", str(best), "--model", str(best), "--json"]
    )
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    one, two = json.loads(one.output), json.loads(two.output)
    assert len(two["ensemble"]) == 2 and "ensemble of 2" in two["protocol"]
    assert two["metrics"] == pytest.approx(one["metrics"])


class FixedScores(torch.nn.Module):
    """Stands in for the recommender: the same scores for every user, whatever the history."""

    max_len = 10

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def forward(self, items, channels, types):
        return None, self.scores.expand(len(items), -1)


def test_ensemble_ranks_by_mean_log_probability():
    from training.recommender.evaluate import Ensemble

    class Member(FixedScores):
        num_items = 3

    # items 1..3. One member prefers item 1, the other item 2, both rank item 3 a close second: the mean of
    # their log-softmax puts the item they agree on first (-1.055 against -1.555 for items 1 and 2).
    a, b = Member([[0.0, 2.0, 0.0, 1.5]]), Member([[0.0, 0.0, 2.0, 1.5]])
    seqs = Sequences([np.array([3, 3, 3])], 3)  # test target 3; items 1 and 2 are not in the history
    ensemble = Ensemble([a, b])
    _, scores = ensemble(torch.zeros(1, 10, dtype=torch.long), None, None)
    assert scores[0, 0] == float("-inf") and scores[0, 1:].argmax().item() + 1 == 3
    expected = (torch.log_softmax(a.scores[:, 1:], 1) + torch.log_softmax(b.scores[:, 1:], 1)) / 2
    assert torch.allclose(scores[:, 1:], expected)
    assert evaluate(ensemble, seqs, "test")["ndcg@5"] == pytest.approx(1.0)
    assert evaluate(a, seqs, "test")["ndcg@5"] == pytest.approx(1 / np.log2(3))  # alone, item 1 outranks it

    class Wider(FixedScores):
        num_items = 4

    with pytest.raises(ValueError, match="vocabulary"):
        Ensemble([a, Wider([[0.0] * 5])])


def test_metrics_on_a_toy_case_with_known_answers():
    # items 1..5; scores rank them 5 > 4 > 3 > 2 > 1 (column 0 is padding)
    model = FixedScores([[9.0, 1, 2, 3, 4, 5]])
    # user A: test target 5, ranked first. user B: test target 1; its history (4, 2) is excluded, so only
    # 5 and 3 outrank it: rank 2 (0-based), NDCG 1/log2(4) = 0.5.
    seqs = Sequences([np.array([2, 3, 5]), np.array([4, 2, 1])], 5)
    m = evaluate(model, seqs, "test")
    assert m["hr@5"] == 1.0 and m["users"] == 2
    assert m["ndcg@5"] == pytest.approx(0.75) and m["ndcg@20"] == pytest.approx(0.75)
    # validation: A's target 3 (history 2) is behind 5 and 4: rank 2; B's target 2 (history 4) behind 5, 3: rank 2
    v = evaluate(model, seqs, "val")
    assert v["hr@5"] == 1.0 and v["ndcg@5"] == pytest.approx(0.5)


def test_train_from_the_service_events(sample_client, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app

    data_dir = sample_client.app.state.settings.data_dir  # the sample catalogue with the synthetic events
    result = CliRunner().invoke(
        app,
        ["train", "recommender", "--from-events", "--out", str(tmp_path / "run"), "--epochs", "2", "--batch", "64"],
        env={"SEESKU_DATA_DIR": str(data_dir)},
    )
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    products = [p["product_id"] for p in sample_client.get("/v1/products", params={"limit": 100}).json()["items"]]
    assert state["vocabulary"] == sorted(products) and state["config"]["exclude_history"] is False
