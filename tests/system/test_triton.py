"""The embedder on a real Triton Inference Server: the `tritonserver` binary of the nvidia-pytriton wheel,
started on CPU with the prepared model repository (tests/conftest.py: triton_server)."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from api.app import create_app
from tests.conftest import SAMPLES, TRITON_MAX_UPLOAD_BYTES, free_port, make_settings
from tests.images import encode, noise
from triton_models.server import REPOSITORY, TritonServer
from vision.manifest import ModelManifest
from vision.preprocess import Limits, decode, load_image
from vision.recommender import Event
from vision.runtimes import EmbedderUnavailable, create_embedder
from vision.runtimes.onnx import OnnxRuntimeEmbedder, OnnxShopperScorer
from vision.runtimes.triton import TritonEmbedder, TritonShopperScorer, parse_url

MODEL_DIR = REPOSITORY / "product_embedder"
QUERIES = sorted((SAMPLES / "queries").glob("*.jpg"))


@pytest.fixture(scope="module")
def local():
    embedder = OnnxRuntimeEmbedder(MODEL_DIR, threads=2)
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def photos():
    spec = ModelManifest.load(MODEL_DIR).input.spec()
    return np.stack([load_image(p.read_bytes(), spec) for p in QUERIES])


def test_triton_outputs_equal_in_process_onnxruntime(triton_server, local, photos):
    remote = create_embedder(triton_server.inference_setting, MODEL_DIR)
    assert isinstance(remote, TritonEmbedder)
    try:
        assert remote.health() is None and remote.loaded
        # 70 photos: more than the model's max batch (64), so the embedder sends 64 + 6; and one photo alone.
        for batch in (np.concatenate([photos] * 7), photos[:1]):
            got, want = remote.embed(batch), local.embed(batch)
            cosine = (got.embedding * want.embedding).sum(1)
            assert got.embedding.shape == (len(batch), 512) and cosine.min() >= 0.9999
            np.testing.assert_allclose(got.fine_probs, want.fine_probs, atol=1e-4)
            np.testing.assert_allclose(got.coarse_probs, want.coarse_probs, atol=1e-4)
        with pytest.raises(ValueError, match="expected uint8"):
            remote.embed(batch.astype(np.float32))
    finally:
        remote.close()


def test_recognizer_ensemble_takes_raw_photo_bytes(triton_server, local, photos):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    data = np.array([[p.read_bytes()] for p in QUERIES], dtype=object)
    photo = grpcclient.InferInput("photo", list(data.shape), "BYTES")
    photo.set_data_from_numpy(data)
    result = client.infer("recognizer", [photo])
    want = local.embed(photos)
    assert ((result.as_numpy("embedding") * want.embedding).sum(1)).min() >= 0.9999
    np.testing.assert_array_equal(result.as_numpy("fine_probs").argmax(1), want.fine_probs.argmax(1))

    # A photo that does not decode fails its request with the decoder's reason; the server stays healthy.
    bad = grpcclient.InferInput("photo", [1, 1], "BYTES")
    bad.set_data_from_numpy(np.array([[b"not a photo"]], dtype=object))
    with pytest.raises(Exception, match="unreadable_image|invalid_image"):
        client.infer("recognizer", [bad])
    assert client.is_model_ready("recognizer") and client.is_model_ready("product_embedder")

    # The upload limit is the service's setting, written into the preprocess model's parameters.
    large = grpcclient.InferInput("photo", [1, 1], "BYTES")
    large.set_data_from_numpy(np.array([[b"\xff\xd8" + b"0" * TRITON_MAX_UPLOAD_BYTES]], dtype=object))
    with pytest.raises(Exception, match="image_too_large"):
        client.infer("recognizer", [large])
    client.close()


def test_shopper_model_on_triton_scores_as_in_process(triton_server, tmp_path):
    """SEESKU_INFERENCE=triton://... serves the shopper model from Triton's user_recommender too."""
    settings = make_settings(tmp_path, inference=triton_server.inference_setting)
    remote = settings.create_shopper_scorer()
    assert isinstance(remote, TritonShopperScorer)
    local = OnnxShopperScorer(REPOSITORY / "user_recommender")
    products = local.manifest.vocabulary
    history = [
        Event("u", products[i], kind, channel, float(i))
        for i, kind, channel in ((3, "view", "app"), (7, "cart", "web"), (3, "purchase", "kiosk"))
    ]
    try:
        remote.load()
        got, want = remote.scores(history), local.scores(history)
        assert list(got) == list(want) == products
        np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-4, atol=1e-4)
        assert remote.scores([Event("u", "Not-In-Vocabulary", "view", "app", 1.0)]) == {}
    finally:
        remote.close()


def test_search_end_to_end_through_triton(triton_server, tmp_path):
    settings = make_settings(tmp_path, load_samples=True, inference=triton_server.inference_setting)
    query = SAMPLES / "queries" / "Beef-Tomato_002.jpg"
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["vectors"] > 80
        resp = client.post("/v1/search", content=query.read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert resp.status_code == 200, resp.text
        via_triton = resp.json()
    # Triton's product_embedder serves the fp32 graph: compare with the same graph in-process.
    local = make_settings(tmp_path / "local", load_samples=True, inference="onnx")
    with TestClient(create_app(local)) as client:
        in_process = client.post(
            "/v1/search", content=query.read_bytes(), headers={"Content-Type": "image/jpeg"}
        ).json()
    assert via_triton["matches"][0]["product_id"] == "Beef-Tomato"
    assert [m["product_id"] for m in via_triton["matches"]] == [m["product_id"] for m in in_process["matches"]]
    for a, b in zip(via_triton["matches"], in_process["matches"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)


def test_objects_through_triton_are_the_in_process_objects(triton_server, tmp_path):
    """SEESKU_INFERENCE=triton://... finds the products with Triton's product_detector too."""
    from tests.images import sample_scene
    from vision.runtimes.triton import TritonDetector

    scene, products = sample_scene(count=3, seed=7)
    data = encode(scene.image, "JPEG", quality=90)
    answers = {}
    for name, inference in (("triton", triton_server.inference_setting), ("onnx", "onnx")):
        settings = make_settings(tmp_path / name, load_samples=True, inference=inference)
        with TestClient(create_app(settings)) as client:
            if name == "triton":
                assert isinstance(client.app.state.service.detector, TritonDetector)
            resp = client.post(
                "/v1/search", params={"objects": "true"}, content=data, headers={"Content-Type": "image/jpeg"}
            )
            assert resp.status_code == 200, resp.text
            answers[name] = resp.json()["objects"]
    assert len(answers["triton"]) == len(answers["onnx"]) == 3
    for a, b in zip(answers["triton"], answers["onnx"]):
        assert a["box"] == pytest.approx(b["box"], abs=1e-3)
        assert a["matches"][0]["product_id"] == b["matches"][0]["product_id"]
    assert {o["matches"][0]["product_id"] for o in answers["triton"]} == set(products)


def test_objects_ensemble_takes_raw_photo_bytes(triton_server, local):
    """`objects`: detect and crop, then embed the whole photo (row 0) and the crops, inside Triton, as the API's
    objects=true does."""
    from api.catalog.objects import object_inputs
    from tests.images import sample_scene
    from vision.runtimes import create_detector

    scene, _ = sample_scene(count=3, seed=8)
    data = encode(scene.image, "JPEG", quality=90)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    photo = grpcclient.InferInput("photo", [1], "BYTES")
    photo.set_data_from_numpy(np.array([data], dtype=object))
    result = client.infer("objects", [photo])
    spec = local.manifest.input.spec()
    detector = create_detector("onnx", REPOSITORY / "product_detector")
    boxes, crops = object_inputs(data, decode(data, spec.resize_size), detector, spec, Limits())
    want = local.embed(np.stack([load_image(data, local.manifest.input.spec()), *crops]))
    np.testing.assert_allclose(result.as_numpy("boxes"), np.stack([b.as_array() for b in boxes]), atol=1e-4)
    np.testing.assert_allclose(result.as_numpy("box_scores"), [b.score for b in boxes], atol=1e-4)
    assert ((result.as_numpy("embedding") * want.embedding).sum(1)).min() >= 0.9999
    np.testing.assert_array_equal(result.as_numpy("fine_probs").argmax(1), want.fine_probs.argmax(1))

    # A photo of no product: no boxes, the whole photo's row alone.
    stripes = np.zeros((480, 640, 3), np.uint8)
    stripes[(np.arange(480) // 40) % 2 == 0] = (30, 60, 200)
    stripes[(np.arange(480) // 40) % 2 == 1] = (240, 220, 40)
    empty = grpcclient.InferInput("photo", [1], "BYTES")
    empty.set_data_from_numpy(np.array([encode(Image.fromarray(stripes), "JPEG", quality=90)], dtype=object))
    nothing = client.infer("objects", [empty])
    assert nothing.as_numpy("boxes").shape == (0, 4) and nothing.as_numpy("embedding").shape == (1, 512)

    bad = grpcclient.InferInput("photo", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not a photo"], dtype=object))
    with pytest.raises(Exception, match="unreadable_image|invalid_image"):
        client.infer("objects", [bad])
    assert client.is_model_ready("objects") and client.is_model_ready("product_detector")
    client.close()


def test_triton_stopped_gives_503_then_recovers(tmp_path):
    """Triton going away mid-run: searches and photo uploads answer 503 with a JSON reason, nothing is
    written, /readyz says why; when Triton is back on the same address the service recovers by itself."""
    server = TritonServer(tmp_path / "triton", free_port(), free_port(), free_port(), log_file=tmp_path / "triton.log")
    server.start()
    settings = make_settings(
        tmp_path / "data",
        load_samples=False,
        inference=server.inference_setting,
        triton_timeout_s=2.0,
        triton_retries=1,
    )
    photo = (SAMPLES / "queries" / "Beef-Tomato_002.jpg").read_bytes()
    try:
        with TestClient(create_app(settings)) as client:
            created = client.post(
                "/v1/products",
                json={
                    "product_id": "tomato",
                    "name": "Tomato",
                    "fine_category": "Beef-Tomato",
                    "coarse_category": "Tomato",
                },
            )
            assert created.status_code == 201, created.text
            added = client.post("/v1/products/tomato/images", files={"images": ("t.jpg", photo, "image/jpeg")})
            assert added.status_code == 201, added.text
            assert client.post("/v1/search", content=photo, headers={"Content-Type": "image/jpeg"}).status_code == 200

            server.stop()
            resp = client.post("/v1/search", content=photo, headers={"Content-Type": "image/jpeg"})
            assert resp.status_code == 503, resp.text
            error = resp.json()["error"]
            assert error["code"] == "inference_unavailable" and server.grpc_url in error["message"]
            assert resp.headers["Retry-After"] == "1"
            added = client.post(
                "/v1/products/tomato/images", files={"images": ("n.png", encode(noise(), "PNG"), "image/png")}
            )
            assert added.status_code == 503
            assert len(client.get("/v1/products/tomato").json()["images"]) == 1  # nothing half-written
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "Triton" in ready.json()["reason"]
            assert client.get("/healthz").status_code == 200  # the process itself is fine

            server.start()
            for _ in range(50):  # the gRPC channel reconnects within about a second
                resp = client.post("/v1/search", content=photo, headers={"Content-Type": "image/jpeg"})
                if resp.status_code == 200:
                    break
            assert resp.status_code == 200, resp.text
            assert resp.json()["matches"][0]["product_id"] == "tomato"
            assert client.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_unreachable_triton_is_a_clear_error(tmp_path):
    embedder = TritonEmbedder(f"triton://127.0.0.1:{free_port()}", MODEL_DIR, timeout_s=1.0, retries=1)
    try:
        with pytest.raises(EmbedderUnavailable, match="unreachable"):
            embedder.load()
        assert not embedder.loaded and "unreachable" in embedder.health()
    finally:
        embedder.close()
    # The API refuses to start against a server that never comes, with the reason, after its wait.
    settings = make_settings(
        tmp_path,
        load_samples=False,
        inference=f"triton://127.0.0.1:{free_port()}",
        inference_startup_wait_s=0,
        triton_timeout_s=1.0,
    )
    with pytest.raises(EmbedderUnavailable):
        with TestClient(create_app(settings)):
            pass


def test_inference_setting_is_validated(tmp_path):
    assert parse_url("triton://triton.internal:8001") == "triton.internal:8001"
    for bad in ("triton://nohost", "grpc://h:1", "triton://h:port"):
        with pytest.raises((ValueError, ValidationError)):
            make_settings(tmp_path, inference=bad)
    with pytest.raises(ValueError, match="HOST:GRPC_PORT"):
        parse_url("triton://nohost")


def test_seesku_triton_serve_starts_a_ready_server(tmp_path):
    """The command a developer runs: prepares the repository, starts tritonserver, says how to use it."""
    import subprocess
    import sys
    import time

    import httpx

    from api.settings import REPO_ROOT

    grpc, http, metrics = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "api.cli",
            "triton",
            "serve",
            "--grpc-port",
            str(grpc),
            "--http-port",
            str(http),
            "--metrics-port",
            str(metrics),
            "--workdir",
            str(tmp_path / "triton"),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            lines.append(proc.stderr.readline())
            if "Triton ready" in lines[-1]:
                break
        assert "Triton ready" in lines[-1], "".join(lines)
        assert f"SEESKU_INFERENCE=triton://127.0.0.1:{grpc}" in proc.stderr.readline()
        for model in ("product_embedder", "preprocess", "recognizer"):
            assert httpx.get(f"http://127.0.0.1:{http}/v2/models/{model}/ready").status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_bulk_tagging_through_triton_matches_in_process(triton_server, local, tmp_path):
    """`seesku tag`'s engine on the Triton embedder (several batches in flight): same categories as in-process."""
    import csv
    import shutil

    from api.tagging.run import Tagger, TagOptions
    from api.tagging.sources import list_items

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((SAMPLES / "catalog").glob("*_*.jpg"))[:20]:
        shutil.copy(p, folder / p.name)
    remote = create_embedder(triton_server.inference_setting, MODEL_DIR)
    try:
        runs = {}
        for name, embedder in (("triton", remote), ("onnxruntime", local)):
            out = tmp_path / f"{name}.csv"
            summary = Tagger(embedder, options=TagOptions(batch=4)).run(list_items(folder), out)
            assert summary.done == 20
            runs[name] = {r["path"]: (r["fine"], r["coarse"]) for r in csv.DictReader(open(out, newline=""))}
        assert runs["triton"] == runs["onnxruntime"]
    finally:
        remote.close()


@pytest.mark.slow
def test_int8_model_on_triton_runs_openvino_as_in_process(tmp_path, photos):
    """The CPU fast path on Triton: served from the int8 folder, the python backend's `auto` runtime is
    OpenVINO, so Triton answers what the in-process OpenVINO embedder answers (ONNX Runtime would run the
    same QDQ graph on other kernels, at a third of the speed, with other rounding)."""
    from vision.runtimes.openvino import OpenVinoEmbedder

    int8_dir = REPOSITORY / "product_embedder_int8"
    server = TritonServer(
        tmp_path / "triton", free_port(), free_port(), free_port(), int8_dir, log_file=tmp_path / "triton.log"
    )
    server.start()
    remote = create_embedder(server.inference_setting, int8_dir)
    local = OpenVinoEmbedder(int8_dir, threads=2)
    try:
        got, want = remote.embed(photos), local.embed(photos)
        cosine = (got.embedding * want.embedding).sum(1)
        assert cosine.min() >= 0.9999
        assert (got.fine_probs.argmax(1) == want.fine_probs.argmax(1)).all()
    finally:
        remote.close()
        local.close()
        server.stop()
