"""Reviewing a tagging job: the page of photos with what needs a person, decisions, and an idempotent apply
that makes catalogue changes product by product."""

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.routers.test_tagging import PHOTOS, photos_zip, submit, wait
from tests.conftest import make_settings

NEW = {"product_id": "Shelf-Find", "name": "Shelf find", "fine_category": "Apple", "coarse_category": "Fruit"}


@pytest.fixture
def done_job(tmp_path):
    """An empty catalogue but for one product, and a finished job of 4 photos + a duplicate."""
    with TestClient(create_app(make_settings(tmp_path / "data", load_samples=False))) as client:
        product = {"product_id": "Known", "name": "Known", "fine_category": "Apple", "coarse_category": "Fruit"}
        assert client.post("/v1/products", json=product).status_code == 201
        job = wait(client, submit(client, photos_zip(4)).json()["id"])
        assert job["state"] == "done"
        yield client, job["id"]


def keys(page):
    return [row["path"] for row in page["rows"]]


def test_the_review_page_filters_sorts_and_pages(done_job):
    client, job_id = done_job
    page = client.get(f"/v1/tagging/jobs/{job_id}/review").json()
    assert page["total"] == 5 and page["counts"]["all"] == 5 and page["counts"]["undecided"] == 5
    # The one product has no photo yet, so nothing is matched; the duplicate pair is flagged as well.
    assert page["counts"]["unmatched"] == page["counts"]["needs_review"] == 5 and page["counts"]["duplicate"] == 2
    dupes = client.get(f"/v1/tagging/jobs/{job_id}/review", params={"filter": "duplicate"}).json()
    assert sorted(keys(dupes)) == sorted([f"shelf/{PHOTOS[0].name}", "shelf/again.jpg"])
    assert all("duplicate" in row["review_reasons"] for row in dupes["rows"])
    needs = client.get(f"/v1/tagging/jobs/{job_id}/review", params={"filter": "needs_review"}).json()
    assert needs["total"] == page["counts"]["needs_review"] and all(row["review_reasons"] for row in needs["rows"])
    by_confidence = client.get(f"/v1/tagging/jobs/{job_id}/review", params={"sort": "confidence"}).json()
    probabilities = [row["fine_probability"] for row in by_confidence["rows"]]
    assert probabilities == sorted(probabilities)
    second = client.get(f"/v1/tagging/jobs/{job_id}/review", params={"offset": 2, "limit": 2}).json()
    assert keys(second) == keys(page)[2:4] and second["total"] == 5
    row = page["rows"][0]
    assert row["decision"] is None and row["matches"] == [] and row["fine"] and "unmatched" in row["review_reasons"]
    assert row["matched"] is False  # judged like a search: no product at all is no match
    assert client.get(row["thumbnail_url"]).headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize(
    "decision, status",
    [
        ({"key": "shelf/nope.jpg", "action": "skip"}, 422),  # not a photo of the job
        ({"key": "shelf/again.jpg", "action": "add_photo"}, 422),  # which product?
        ({"key": "shelf/again.jpg", "action": "new_product", "product": {"product_id": "x"}}, 422),
        ({"key": "shelf/again.jpg", "action": "delete"}, 422),
        ({"key": "shelf/again.jpg", "action": "add_photo", "product_id": "bad id!"}, 422),
    ],
)
def test_bad_decisions_are_refused_and_store_nothing(done_job, decision, status):
    client, job_id = done_job
    good = {"key": f"shelf/{PHOTOS[1].name}", "action": "skip"}
    resp = client.post(f"/v1/tagging/jobs/{job_id}/decisions", json={"decisions": [good, decision]})
    assert resp.status_code == status and resp.json()["error"]["message"]
    assert client.get(f"/v1/tagging/jobs/{job_id}/review").json()["counts"]["undecided"] == 5


def test_apply_makes_the_catalogue_changes_once_and_reports_failures(done_job):
    client, job_id = done_job
    a, b, c, d = (f"shelf/{p.name}" for p in PHOTOS[:4])
    decisions = [
        {"key": a, "action": "new_product", "product": NEW},
        {"key": "shelf/again.jpg", "action": "new_product", "product": NEW},  # the same photo: added once
        {"key": b, "action": "add_photo", "product_id": "Known"},
        {"key": c, "action": "skip"},
        {"key": d, "action": "add_photo", "product_id": "Gone"},
    ]
    resp = client.post(f"/v1/tagging/jobs/{job_id}/decisions", json={"decisions": decisions})
    assert resp.status_code == 200 and resp.json() == {"recorded": 5, "pending": 5}

    report = client.post(f"/v1/tagging/jobs/{job_id}/apply").json()
    applied = {p["product_id"]: p for p in report["applied"]}
    assert applied["Shelf-Find"]["created"] and applied["Shelf-Find"]["added"] == 1
    assert applied["Known"] == {"product_id": "Known", "created": False, "photos": [b], "added": 1}
    assert report["skipped"] == 1 and report["remaining"] == 0
    assert report["failed"] == [
        {"product_id": "Gone", "photos": [d], "error": "no product 'Gone' in the catalogue (deleted since?)"}
    ]

    # Searchable at once: the photo now finds the product made from it.
    hit = client.post("/v1/search", content=PHOTOS[0].read_bytes(), headers={"Content-Type": "image/jpeg"}).json()
    assert hit["matches"][0]["product_id"] == "Shelf-Find" and hit["matched"]
    assert len(client.get("/v1/products/Known/images").json()) == 1
    assert len(client.get("/v1/products/Shelf-Find/images").json()) == 1

    again = client.post(f"/v1/tagging/jobs/{job_id}/apply").json()
    assert again == {"applied": [], "failed": [], "skipped": 0, "remaining": 0}  # nothing more changes
    page = client.get(f"/v1/tagging/jobs/{job_id}/review").json()
    outcomes = {row["path"]: row["decision"]["outcome"] for row in page["rows"]}
    assert outcomes == {a: "applied", "shelf/again.jpg": "applied", b: "applied", c: "skipped", d: "failed"}

    # An applied decision stays; a failed one can be decided anew and applied.
    resp = client.post(f"/v1/tagging/jobs/{job_id}/decisions", json={"decisions": [{"key": a, "action": "skip"}]})
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "bad_decision"
    fix = {"key": d, "action": "add_photo", "product_id": "Known"}
    assert client.post(f"/v1/tagging/jobs/{job_id}/decisions", json={"decisions": [fix]}).json()["pending"] == 1
    report = client.post(f"/v1/tagging/jobs/{job_id}/apply").json()
    assert [p["product_id"] for p in report["applied"]] == ["Known"] and not report["failed"]
    assert len(client.get("/v1/products/Known/images").json()) == 2


def test_apply_in_steps_says_what_remains_and_a_taken_id_fails(done_job):
    client, job_id = done_job
    a, b, c = (f"shelf/{p.name}" for p in PHOTOS[:3])
    other = {**NEW, "product_id": "Known", "name": "Not the known one"}
    decisions = [
        {"key": a, "action": "new_product", "product": {**NEW, "product_id": "P1"}},
        {"key": b, "action": "new_product", "product": {**NEW, "product_id": "P2"}},
        {"key": c, "action": "new_product", "product": other},
    ]
    client.post(f"/v1/tagging/jobs/{job_id}/decisions", json={"decisions": decisions})
    first = client.post(f"/v1/tagging/jobs/{job_id}/apply", params={"max_products": 1}).json()
    assert len(first["applied"]) + len(first["failed"]) == 1 and first["remaining"] == 2
    rest = client.post(f"/v1/tagging/jobs/{job_id}/apply").json()
    failed = first["failed"] + rest["failed"]
    assert rest["remaining"] == 0 and [p["product_id"] for p in failed] == ["Known"]
    assert "exists already" in failed[0]["error"]
    assert sorted(p["product_id"] for p in first["applied"] + rest["applied"]) == ["P1", "P2"]
    assert client.get("/v1/products/Known").json()["name"] == "Known"  # the existing product is untouched


def test_review_of_an_unknown_or_unfinished_job(done_job, tmp_path):
    client, job_id = done_job
    assert client.get("/v1/tagging/jobs/nope/review").status_code == 404
    running = submit(client, photos_zip(4)).json()["id"]
    client.delete(f"/v1/tagging/jobs/{running}")
    state = wait(client, running)["state"]
    if state != "done":  # cancelled before it finished
        resp = client.post(f"/v1/tagging/jobs/{running}/apply")
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "job_not_done"
