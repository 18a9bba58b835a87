"""Switching models without a restart: the served int8 embedder to the fp32 one while searches run and a
merchandiser adds a product, then a restart that keeps the new version; the shopper model the same way."""

import threading
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import REPO_ROOT
from tests.conftest import SAMPLES, make_settings

FP32 = REPO_ROOT / "triton_models" / "product_embedder"
QUERY = SAMPLES / "queries" / "Garant-Ecological-Standard-Milk_004.jpg"


def search(client, photo=QUERY.read_bytes()):
    return client.post("/v1/search", content=photo, headers={"Content-Type": "image/jpeg"})


def wait_serving(client, kind, folder, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get("/v1/models").json()[kind]
        if state["model_dir"] == str(folder) and state["state"] == "serving":
            return state
        assert state["state"] != "failed", state
        time.sleep(0.1)
    raise AssertionError(f"{kind} still not serving {folder}: {state}")


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture(scope="module")
def new_photo() -> bytes:
    """A photo no sample product has: the one product it can match is the one made from it."""
    from training.open_set import non_product_photos

    return non_product_photos(1, seed=5)[0][1]


def test_switch_while_searching_and_writing_then_restart(data_dir, new_photo):
    with TestClient(create_app(make_settings(data_dir, inference="openvino"))) as client:
        before = client.get("/v1/models").json()["vision"]
        assert before["serving"].startswith("seesku-efficientnet-lite0-ft-int8:") and before["state"] == "serving"
        answers, stop = [], threading.Event()

        def shopper():
            while not stop.is_set():
                resp = search(client)
                answers.append((resp.status_code, resp.json().get("model")))

        thread = threading.Thread(target=shopper)
        thread.start()
        try:
            resp = client.put("/v1/models/vision", json={"model_dir": str(FP32)})
            assert resp.status_code == 202, resp.text
            # A product added while the new version is being prepared: written with the old version's vector.
            product = {"product_id": "Added-Meanwhile", "name": "A", "fine_category": "Milk", "coarse_category": "Milk"}
            assert client.post("/v1/products", json=product).status_code == 201
            upload = {"images": ("new.jpg", new_photo, "image/jpeg")}
            assert client.post("/v1/products/Added-Meanwhile/images", files=upload).status_code == 201
            after = wait_serving(client, "vision", FP32)
            time.sleep(0.5)  # searches on the new version too
        finally:
            stop.set()
            thread.join()
        assert after["serving"].startswith("seesku-efficientnet-lite0-ft:") and after["progress"][1] >= 0
        assert answers and all(code == 200 for code, _ in answers), {code for code, _ in answers}
        versions = [model["id"] for _, model in answers]
        first_new = versions.index("seesku-efficientnet-lite0-ft")
        assert set(versions[:first_new]) == {"seesku-efficientnet-lite0-ft-int8"}  # every answer one version
        assert set(versions[first_new:]) == {"seesku-efficientnet-lite0-ft"}  # and never back
        # The new version's index holds the photo added meanwhile, embedded by the new model.
        top = search(client, new_photo).json()["matches"][0]
        assert top["product_id"] == "Added-Meanwhile" and top["visual_score"] > 0.99
        assert search(client).json()["matches"][0]["product_id"] == "Garant-Ecological-Standard-Milk"

    # A restart serves the requested version from the start, with every vector already stored.
    with TestClient(create_app(make_settings(data_dir, inference="openvino"))) as client:
        state = client.get("/v1/models").json()["vision"]
        assert state["serving"] == after["serving"] and state["model_dir"] == str(FP32)
        service = client.app.state.service
        assert not service.store.stale_images(service.model_id)
        assert search(client, new_photo).json()["matches"][0]["product_id"] == "Added-Meanwhile"


def test_bad_switch_requests_are_refused_and_change_nothing(data_dir, tmp_path):
    with TestClient(create_app(make_settings(data_dir, load_samples=False))) as client:
        serving = client.get("/v1/models").json()["vision"]["serving"]
        for kind, folder, code in [
            ("vision", tmp_path, "bad_model"),  # no manifest
            ("vision", REPO_ROOT / "triton_models" / "user_recommender", "bad_model"),  # the other kind's model
            ("shopper", FP32, "bad_model"),
        ]:
            resp = client.put(f"/v1/models/{kind}", json={"model_dir": str(folder)})
            assert resp.status_code == 422 and resp.json()["error"]["code"] == code, resp.text
        assert client.put("/v1/models/detector", json={"model_dir": str(FP32)}).status_code == 422
        assert client.get("/v1/models").json()["vision"]["serving"] == serving


def test_a_shopper_model_trained_on_the_service_events_is_switched_to_while_shoppers_search(data_dir, tmp_path):
    """The loop a shop runs: its own events train a new shopper model, which replaces the served one while
    personalised searches keep coming; every answer names the version that re-ranked it."""
    from typer.testing import CliRunner

    from api.cli import app

    trained = tmp_path / "user_recommender_from_events"
    with TestClient(create_app(make_settings(data_dir, load_samples=True))) as client:
        before = client.get("/v1/models").json()["shopper"]["serving"]
        argv = ["train", "recommender", "--from-events", "--out", str(tmp_path / "run"), "--epochs", "2"]
        result = CliRunner().invoke(
            app, [*argv, "--batch", "64", "--export-to", str(trained)], env={"SEESKU_DATA_DIR": str(data_dir)}
        )
        assert result.exit_code == 0, result.output
        user = client.get("/v1/users/shopper-0001/history").json()
        assert user["events"], "the sample events have this shopper"
        answers, stop = [], threading.Event()

        def shopper():
            while not stop.is_set():
                resp = client.post(
                    "/v1/search", params={"user_id": "shopper-0001"}, content=QUERY.read_bytes(),
                    headers={"Content-Type": "image/jpeg"},
                )  # fmt: skip
                answers.append((resp.status_code, resp.json().get("personal_model")))

        thread = threading.Thread(target=shopper)
        thread.start()
        try:
            time.sleep(0.5)
            assert client.put("/v1/models/shopper", json={"model_dir": str(trained)}).status_code == 202
            after = wait_serving(client, "shopper", trained)["serving"]
            time.sleep(0.5)
        finally:
            stop.set()
            thread.join()
        assert after != before
        assert answers and all(code == 200 for code, _ in answers), {code for code, _ in answers}
        versions = [model for _, model in answers]
        first_new = versions.index(after)
        assert set(versions[:first_new]) == {before} and set(versions[first_new:]) == {after}
        recommended = client.get("/v1/users/shopper-0001/recommendations").json()
        assert recommended["source"] == "model" and recommended["model"] == after
