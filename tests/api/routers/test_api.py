"""The HTTP contract, through the real app (TestClient runs its lifespan: model, store, index)."""

import io

import pytest
from PIL import Image

from api.schemas import SearchResponse
from tests.conftest import SAMPLES
from tests.images import SAMPLE_PHOTO, encode, noise, png_claiming

QUERY = SAMPLES / "queries" / "Beef-Tomato_002.jpg"


def assert_error(resp, status: int, code: str | None = None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def search(client, data: bytes, **params):
    return client.post("/v1/search", files={"image": ("photo.jpg", data, "image/jpeg")}, params=params)


# -- search ---------------------------------------------------------------------------------------


def test_search_contract(sample_client):
    resp = search(sample_client, QUERY.read_bytes(), k=5)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    SearchResponse.model_validate(body)  # the route builds plain JSON values: they must keep to the contract
    assert set(body) == {
        "matched",
        "match_confidence",
        "matches",
        "categories",
        "timings_ms",
        "model",
        "personal_model",
        "channel",
    }
    assert len(body["matches"]) == 5
    first = body["matches"][0]
    assert set(first) == {
        "product_id",
        "name",
        "category",
        "score",
        "visual_score",
        "category_probability",
        "personal_score",
        "image_url",
        "thumbnail_url",
    }
    for m in body["matches"]:  # the documented rule, with the default head weight 0.5
        assert m["score"] == pytest.approx(m["visual_score"] + 0.5 * m["category_probability"], abs=1e-5)
    assert set(first["category"]) == {"fine", "coarse"}
    scores = [m["score"] for m in body["matches"]]
    assert scores == sorted(scores, reverse=True) and len({m["product_id"] for m in body["matches"]}) == 5
    assert "Beef-Tomato" in [m["product_id"] for m in body["matches"]]
    assert body["categories"]["coarse"][0]["name"] == "Tomato"
    for level in ("fine", "coarse"):
        probs = [c["probability"] for c in body["categories"][level]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-4
    assert set(body["timings_ms"]) == {"sync", "decode", "embed", "search", "total"}
    assert body["model"]["id"] and body["channel"] == "api"
    image = sample_client.get(first["image_url"])
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    thumb = sample_client.get(first["thumbnail_url"])
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"


def test_search_raw_body_and_channel_header(sample_client):
    resp = sample_client.post(
        "/v1/search?k=3", content=QUERY.read_bytes(), headers={"Content-Type": "image/jpeg", "X-Channel": "kiosk"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["channel"] == "kiosk" and len(resp.json()["matches"]) == 3


def test_search_form_fields(sample_client):
    resp = sample_client.post(
        "/v1/search",
        files={"image": ("q.jpg", QUERY.read_bytes(), "image/jpeg")},
        data={"k": "2", "category": "Tomato", "user_id": "shopper-1"},
    )
    assert resp.status_code == 200, resp.text
    matches = resp.json()["matches"]
    assert len(matches) == 2 and all(m["category"]["coarse"] == "Tomato" for m in matches)


def test_every_validation_error_has_one_shape(sample_client):
    """FastAPI's own validation (a product body), the search route's (its options) and a route's own check
    (a null field in a PATCH) all answer the same 422: `where: what` as the message, every problem in details."""
    answers = [
        sample_client.post("/v1/products", json={"product_id": "x"}),
        search(sample_client, QUERY.read_bytes(), k=0),
        sample_client.patch("/v1/products/Banana", json={"name": None}),
    ]
    for resp, where in zip(answers, ["body.", "query.k: ", "body.name: "]):
        error = assert_error(resp, 422, "validation_error")
        assert error["message"].startswith(where), error
        assert error["details"] and all(set(d) == {"loc", "msg", "type"} for d in error["details"]), error
        assert error["message"] == f"{'.'.join(map(str, error['details'][0]['loc']))}: {error['details'][0]['msg']}"


def test_search_options_query_wins_and_each_bad_one_is_named(sample_client):
    """The route validates its options itself (api.routers.search.search_params): the query string beats a
    form field, and every bad option is reported with where it came from."""
    resp = sample_client.post(
        "/v1/search?k=1", files={"image": ("q.jpg", QUERY.read_bytes(), "image/jpeg")}, data={"k": "4"}
    )
    assert resp.status_code == 200 and len(resp.json()["matches"]) == 1
    resp = sample_client.post(
        "/v1/search?k=abc",
        files={"image": ("q.jpg", QUERY.read_bytes(), "image/jpeg")},
        data={"personal_weight": "11"},
        headers={"X-Channel": "fax"},
    )
    error = assert_error(resp, 422, "validation_error")
    assert error["message"].startswith("query.k: ")
    assert [d["loc"] for d in error["details"]] == [
        ["query", "k"],
        ["body", "personal_weight"],
        ["header", "x-channel"],
    ]
    # ... and the OpenAPI document still lists them, with the limits the route enforces
    operation = sample_client.get("/openapi.json").json()["paths"]["/v1/search"]["post"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"k", "category", "user_id", "personal_weight", "objects", "x-channel"}
    assert params["k"]["schema"]["maximum"] == 100 and params["x-channel"]["in"] == "header"
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert set(form) == {"image", "k", "category", "user_id", "personal_weight", "objects"}


def test_search_category_filter_fine(sample_client):
    resp = search(sample_client, QUERY.read_bytes(), category="Granny-Smith")
    assert [m["product_id"] for m in resp.json()["matches"]] == ["Granny-Smith"]


# -- bad input: a 4xx JSON error that says what was wrong, and the server keeps serving --------------

BAD_SEARCHES = [
    (
        "empty body",
        lambda c: c.post("/v1/search", content=b"", headers={"Content-Type": "image/jpeg"}),
        422,
        "empty_image",
    ),
    ("empty file", lambda c: search(c, b""), 422, "empty_image"),
    ("text named .jpg", lambda c: search(c, b"hello, I am not a photo\n" * 20), 422, "unreadable_image"),
    ("truncated JPEG", lambda c: search(c, SAMPLE_PHOTO.read_bytes()[:3000]), 422, "unreadable_image"),
    ("0x0 PNG", lambda c: search(c, png_claiming(0, 0)), 422, None),
    ("decompression bomb", lambda c: search(c, png_claiming(60_000, 60_000)), 422, "too_many_pixels"),
    ("30 MB upload", lambda c: search(c, b"\xff\xd8" + b"\0" * (30 * 1024 * 1024)), 413, None),
    ("k=0", lambda c: search(c, QUERY.read_bytes(), k=0), 422, "validation_error"),
    ("k=10000", lambda c: search(c, QUERY.read_bytes(), k=10000), 422, "validation_error"),
    ("unknown category", lambda c: search(c, QUERY.read_bytes(), category="Spaceships"), 422, "unknown_category"),
    (
        "unknown channel",
        lambda c: c.post("/v1/search", files={"image": ("q.jpg", QUERY.read_bytes())}, headers={"X-Channel": "fax"}),
        422,
        "validation_error",
    ),
    (
        "no image field",
        lambda c: c.post("/v1/search", files={"photo": ("q.jpg", QUERY.read_bytes())}),
        422,
        "missing_image",
    ),
]


@pytest.mark.parametrize("name,call,status,code", BAD_SEARCHES, ids=[b[0] for b in BAD_SEARCHES])
def test_bad_search_input(sample_client, name, call, status, code):
    assert_error(call(sample_client), status, code)
    assert search(sample_client, QUERY.read_bytes(), k=1).status_code == 200


def test_unknown_product_and_image(sample_client):
    assert_error(sample_client.get("/v1/products/No-Such-Product"), 404, "not_found")
    assert_error(sample_client.get("/v1/products/Banana/images/999999"), 404, "not_found")
    assert_error(sample_client.delete("/v1/products/No-Such-Product"), 404, "not_found")
    assert_error(sample_client.patch("/v1/products/No-Such-Product", json={"name": "x"}), 404, "not_found")
    assert_error(sample_client.get("/v1/nothing-here"), 404, "not_found")


# -- products -------------------------------------------------------------------------------------


def new_product(pid="Test-Oat-Milk", **extra):
    return {
        "product_id": pid,
        "name": "Test Oat Milk",
        "fine_category": "Test-Oat-Milk",
        "coarse_category": "Test-Milk",
        "description": "made up for a test",
        **extra,
    }


def test_product_lifecycle_new_product_searchable_at_once(empty_client):
    c = empty_client
    resp = c.post("/v1/products", json=new_product(attributes={"brand": "Test"}))
    assert resp.status_code == 201, resp.text
    assert resp.json()["images"] == []
    assert_error(c.post("/v1/products", json=new_product()), 409, "already_exists")

    photo = noise((400, 300), seed=3)
    files = [
        ("images", ("a.png", encode(photo, "PNG"), "image/png")),
        ("images", ("b.jpg", SAMPLE_PHOTO.read_bytes(), "image/jpeg")),
    ]
    resp = c.post("/v1/products/Test-Oat-Milk/images", files=files)
    assert resp.status_code == 201, resp.text
    added = resp.json()["added"]
    assert len(added) == 2 and {a["content_type"] for a in added} == {"image/png", "image/jpeg"}

    found = search(c, encode(photo, "PNG"), k=1).json()["matches"]
    assert found[0]["product_id"] == "Test-Oat-Milk" and found[0]["score"] > 0.99

    resp = c.patch("/v1/products/Test-Oat-Milk", json={"name": "Renamed", "fine_category": "Oat-Drink"})
    assert resp.status_code == 200 and resp.json()["name"] == "Renamed"
    assert search(c, encode(photo, "PNG"), k=1, category="Oat-Drink").json()["matches"][0]["name"] == "Renamed"

    # removing the PNG photo: the product now matches only through the banana photo
    png_id = next(a["image_id"] for a in added if a["content_type"] == "image/png")
    assert c.delete(f"/v1/products/Test-Oat-Milk/images/{png_id}").status_code == 204
    assert len(c.get("/v1/products/Test-Oat-Milk/images").json()) == 1
    assert search(c, encode(photo, "PNG"), k=1).json()["matches"][0]["score"] < 0.99

    assert c.delete("/v1/products/Test-Oat-Milk").status_code == 204
    assert search(c, encode(photo, "PNG"), k=5).json()["matches"] == []
    assert_error(c.get("/v1/products/Test-Oat-Milk"), 404)


def test_bad_photo_in_batch_adds_none(empty_client):
    c = empty_client
    c.post("/v1/products", json=new_product())
    files = [
        ("images", ("ok.png", encode(noise(), "PNG"), "image/png")),
        ("images", ("broken.jpg", b"definitely not a jpeg", "image/jpeg")),
    ]
    err = assert_error(c.post("/v1/products/Test-Oat-Milk/images", files=files), 422, "unreadable_image")
    assert err["details"] == {"photo": 1, "filename": "broken.jpg"}
    assert c.get("/v1/products/Test-Oat-Milk").json()["images"] == []
    assert c.get("/readyz").json()["vectors"] == 0


def test_product_validation(empty_client):
    c = empty_client
    assert_error(c.post("/v1/products", json={"product_id": "x"}), 422, "validation_error")
    assert_error(c.post("/v1/products", json=new_product(pid="../etc/passwd")), 422, "validation_error")
    assert_error(c.post("/v1/products", json=new_product(unexpected=1)), 422, "validation_error")
    assert_error(c.post("/v1/products", content=b"{not json", headers={"Content-Type": "application/json"}), 422)
    c.post("/v1/products", json=new_product())
    assert_error(c.patch("/v1/products/Test-Oat-Milk", json={"name": None}), 422, "validation_error")
    assert_error(c.get("/v1/products", params={"cursor": "%%%"}), 422)


def test_listing_paginates_and_filters(sample_client):
    seen, cursor = [], None
    while True:
        params = {"limit": 30, **({"cursor": cursor} if cursor else {})}
        page = sample_client.get("/v1/products", params=params).json()
        seen += [p["product_id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 81 and seen == sorted(seen)
    apples = sample_client.get("/v1/products", params={"category": "Apple"}).json()["items"]
    assert {p["product_id"] for p in apples} == {
        "Golden-Delicious",
        "Granny-Smith",
        "Pink-Lady",
        "Red-Delicious",
        "Royal-Gala",
    }
    found = sample_client.get("/v1/products", params={"q": "DELICIOUS"}).json()["items"]
    assert [p["product_id"] for p in found] == ["Golden-Delicious", "Red-Delicious"]  # id or name, any case
    juices = sample_client.get("/v1/products", params={"q": "juice", "category": "Juice", "limit": 2}).json()
    assert (
        len(juices["items"]) == 2
        and juices["next_cursor"]
        and all("juice" in (p["name"] + p["product_id"]).lower() for p in juices["items"])
    )
    rest = sample_client.get(
        "/v1/products", params={"q": "juice", "category": "Juice", "cursor": juices["next_cursor"]}
    )
    assert rest.json()["items"] and rest.json()["items"][0]["product_id"] > juices["items"][-1]["product_id"]
    assert sample_client.get("/v1/products", params={"q": "50%_"}).json()["items"] == []  # wildcards are literal
    banana = sample_client.get("/v1/products/Banana").json()
    assert banana["coarse_category"] == "Banana" and len(banana["images"]) == 5 and banana["description"]


def test_categories_health_metrics_docs(sample_client):
    cats = sample_client.get("/v1/categories").json()
    assert len(cats["fine"]) == 81 and len(cats["coarse"]) == 43
    assert sum(c["products"] for c in cats["coarse"]) == 81 and len(cats["model_fine_labels"]) == 81
    assert sample_client.get("/healthz").json() == {"status": "ok"}
    ready = sample_client.get("/readyz").json()
    assert ready["ready"] and ready["products"] == 81 and ready["vectors"] == 405
    search(sample_client, QUERY.read_bytes())
    sample_client.post("/v1/search", content=QUERY.read_bytes(), headers={"X-Channel": "app"})
    text = sample_client.get("/metrics").text
    assert 'seesku_request_seconds_count{channel="app",method="POST",route="/v1/search"}' in text
    assert "seesku_embed_seconds_count" in text and "seesku_index_vectors 405.0" in text
    assert sample_client.get("/openapi.json").json()["paths"]["/v1/search"]["post"]["requestBody"]
    assert sample_client.get("/docs").status_code == 200
