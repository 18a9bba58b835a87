"""The real service in a subprocess (`seesku serve` under uvicorn), driven over HTTP like a client."""

import csv
import json

import httpx
import pytest

from tests.conftest import SAMPLES, sample_catalog_subset, seesku
from tests.images import png_claiming

pytestmark = pytest.mark.slow


def found(base: str, queries_csv: str) -> tuple[int, int]:
    """How many of a sample query set find their product at rank 1, and in the top 5, through the real API."""
    first = top5 = 0
    with httpx.Client(base_url=base, timeout=30) as client:
        for row in csv.DictReader((SAMPLES / queries_csv).read_text().splitlines()):
            resp = client.post("/v1/search", params={"k": 5}, files={"image": (SAMPLES / row["image"]).read_bytes()})
            assert resp.status_code == 200, resp.text
            ids = [m["product_id"] for m in resp.json()["matches"]]
            first += ids[0] == row["product_id"]
            top5 += row["product_id"] in ids
    return first, top5


def test_sample_queries_find_their_product(live_server):
    first, top5 = found(live_server[0], "queries.csv")
    # The sample queries are val photos, which the served final fit (train + val) has seen: this checks the
    # service end to end (upload, preprocess, model, index, ranking), not accuracy (training/reports/grocery.md
    # has the test figures). 10 of 10 at rank 1 with it; 9 of 10 with the train-only model, which took the
    # Cantaloupe photo for a Galia melon; either model must keep passing.
    assert first >= 9, f"{first}/10 sample queries found their product at rank 1"
    assert top5 >= 9, f"{top5}/10 sample queries found their product in the top 5"


def test_unseen_sample_queries_find_their_product(live_server):
    # Ten test photos (samples/queries-test/, drawn by a fixed rule, never trained on or chosen by): the served
    # model gets 7 at rank 1 (it takes the Lemon for a Red-Grapefruit, the Kaiser pear for an Anjou, the
    # Floury-Potato for a Solid-Potato: the look-alikes of training/reports/grocery.md) and all 10 in the top 5.
    first, top5 = found(live_server[0], "queries-test.csv")
    assert first >= 7, f"{first}/10 unseen sample queries found their product at rank 1"
    assert top5 >= 9, f"{top5}/10 unseen sample queries found their product in the top 5"


def test_bad_input_does_not_hurt_the_server(live_server):
    base, proc = live_server
    query = (SAMPLES / "queries" / "Red-Beet_003.jpg").read_bytes()
    with httpx.Client(base_url=base, timeout=30) as client:
        bad = [
            client.post("/v1/search", content=b"", headers={"Content-Type": "image/jpeg"}),
            client.post("/v1/search", files={"image": ("x.jpg", b"plain text pretending" * 50)}),
            client.post("/v1/search", files={"image": ("x.jpg", query[:2000])}),
            client.post("/v1/search", files={"image": ("x.png", png_claiming(0, 0))}),
            client.post("/v1/search", files={"image": ("x.png", png_claiming(50_000, 50_000))}),
            client.post("/v1/search", content=b"\0" * (30 * 1024 * 1024), headers={"Content-Type": "image/jpeg"}),
            client.post("/v1/search", params={"k": 0}, files={"image": query}),
            client.post("/v1/search", params={"k": 10000}, files={"image": query}),
            client.post("/v1/search", params={"category": "Nope"}, files={"image": query}),
            client.get("/v1/products/Nope"),
        ]
        for resp in bad:
            assert 400 <= resp.status_code < 500, resp.text
            assert resp.json()["error"]["message"]
        assert [r.status_code for r in bad] == [422, 422, 422, 422, 422, 413, 422, 422, 422, 404]
        ok = client.post("/v1/search", files={"image": query})
        assert ok.status_code == 200 and ok.json()["matches"][0]["product_id"] == "Red-Beet"
    assert proc.poll() is None


def test_cli_import_export_search_roundtrip(tmp_path):
    small = tmp_path / "in" / "catalog.csv"
    sample_catalog_subset(small, limit=5)
    done = seesku("catalog", "import", str(small), data_dir=tmp_path / "a")
    assert done.returncode == 0, done.stderr
    assert "imported 5 products" in done.stdout and "25 photos indexed" in done.stdout

    exported = seesku("catalog", "export", str(tmp_path / "out"), data_dir=tmp_path / "a")
    assert exported.returncode == 0, exported.stderr
    again = seesku("catalog", "import", str(tmp_path / "out" / "catalog.csv"), data_dir=tmp_path / "b")
    assert again.returncode == 0 and "25 photos indexed" in again.stdout

    found = seesku("search", str(SAMPLES / "catalog" / "Granny-Smith.jpg"), "--k", "3", data_dir=tmp_path / "b")
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout)
    assert answer["matches"][0]["product_id"] == "Granny-Smith" and answer["channel"] == "batch"
    assert "objects" not in answer
    boxed = seesku("search", str(SAMPLES / "catalog" / "Granny-Smith_004.jpg"), "--objects", data_dir=tmp_path / "b")
    assert boxed.returncode == 0, boxed.stderr
    objects = json.loads(boxed.stdout)["objects"]
    assert len(objects) == 1 and objects[0]["matches"][0]["product_id"] == "Granny-Smith"
