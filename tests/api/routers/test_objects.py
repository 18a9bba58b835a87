"""`POST /v1/search?objects=true`: each product in the photo, boxed and searched by the search's own rule."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.conftest import SAMPLES, make_settings
from tests.conftest import search_json as search
from tests.images import encode, sample_scene
from vision.detection import iou_matrix

QUERY = SAMPLES / "queries" / "Beef-Tomato_002.jpg"


def test_each_product_of_a_basket_photo_is_boxed_and_found(sample_client):
    scene, products = sample_scene(count=3, seed=4)
    body = search(sample_client, encode(scene.image, "JPEG", quality=90), objects="true", k=3)
    objects = body["objects"]
    assert 3 <= len(objects) <= 4 and body["detector"].startswith("seesku-detector")
    assert [o["score"] for o in objects] == sorted((o["score"] for o in objects), reverse=True)
    boxes = np.array([[o["box"][c] for c in ("x0", "y0", "x1", "y1")] for o in objects])
    overlaps = iou_matrix(scene.boxes, boxes)
    for j, product in enumerate(products):
        best = int(overlaps[j].argmax())
        assert overlaps[j, best] >= 0.5, (product, overlaps[j])
        assert objects[best]["matches"][0]["product_id"] == product
        assert objects[best]["matched"] is True and len(objects[best]["matches"]) == 3
    assert body["timings_ms"]["detect"] > 0


def test_the_whole_photo_answer_is_the_same_with_or_without_objects(sample_client):
    data = QUERY.read_bytes()
    plain = search(sample_client, data, k=5)
    with_objects = search(sample_client, data, k=5, objects="true")
    assert "objects" not in plain and "detector" not in plain
    assert with_objects["matches"] == plain["matches"] and with_objects["categories"] == plain["categories"]
    assert with_objects["matched"] == plain["matched"]
    # One product filling the photo: one object, the same product on top.
    assert len(with_objects["objects"]) == 1
    assert with_objects["objects"][0]["matches"][0]["product_id"] == plain["matches"][0]["product_id"]


def test_objects_are_ranked_for_the_shopper_by_the_same_rule(sample_client):
    scene, _ = sample_scene(count=2, seed=5)
    data = encode(scene.image, "JPEG", quality=90)
    body = search(sample_client, data, objects="true", user_id="u-objects", personal_weight="0")
    visual = search(sample_client, data, objects="true")
    assert [o["matches"] for o in body["objects"]] == [o["matches"] for o in visual["objects"]]


def test_a_photo_of_no_product_has_an_empty_objects_list(sample_client):
    stripes = np.zeros((480, 640, 3), np.uint8)
    stripes[(np.arange(480) // 40) % 2 == 0] = (30, 60, 200)
    stripes[(np.arange(480) // 40) % 2 == 1] = (240, 220, 40)
    from PIL import Image

    body = search(sample_client, encode(Image.fromarray(stripes), "JPEG", quality=90), objects="true")
    assert body["objects"] == [] and len(body["matches"]) > 0


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_a_bad_objects_value_is_a_422_that_names_it(sample_client, value):
    resp = sample_client.post(
        "/v1/search", files={"image": ("p.jpg", QUERY.read_bytes(), "image/jpeg")}, params={"objects": value}
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["details"][0]["loc"] == ["query", "objects"]


def test_without_a_detector_objects_is_a_503_and_plain_search_still_works(tmp_path):
    settings = make_settings(tmp_path, load_samples=True, detector_dir=tmp_path / "no-detector")
    with TestClient(create_app(settings)) as client:
        resp = client.post(
            "/v1/search", params={"objects": "true"}, files={"image": ("p.jpg", QUERY.read_bytes(), "image/jpeg")}
        )
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "detector_unavailable"
        assert "objects" not in search(client, QUERY.read_bytes())
