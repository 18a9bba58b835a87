"""The OpenVINO embedder against ONNX Runtime on the sample photos, and the shipped int8 model's manifest.

Thresholds: fp32 on OpenVINO is the same graph with other kernels (another summation order), so embeddings
agree to float rounding (measured min cosine 0.9999995 on the 415 sample photos) and every top-1 matches.
The int8 graph rounds every activation of the backbone to 8 bits: measured on the same photos, mean cosine
0.978, min 0.84, top-1 agreement 100 %; the thresholds leave room for another CPU's int8 kernels.
"""

import threading

import numpy as np
import pytest

from api.settings import REPO_ROOT
from tests.conftest import SAMPLES
from vision.manifest import ModelManifest
from vision.preprocess import load_image
from vision.runtimes import create_embedder
from vision.runtimes.onnx import OnnxRuntimeEmbedder

pytest.importorskip("openvino")
from vision.runtimes.openvino import OpenVinoEmbedder  # noqa: E402

FP32 = REPO_ROOT / "triton_models" / "product_embedder"
INT8 = REPO_ROOT / "triton_models" / "product_embedder_int8"


@pytest.fixture(scope="module")
def photos_and_reference():
    reference = OnnxRuntimeEmbedder(FP32)
    spec = reference.manifest.input.spec()
    paths = sorted((SAMPLES / "queries").glob("*.jpg")) + sorted((SAMPLES / "catalog").glob("*.jpg"))[::4]
    pixels = np.stack([load_image(p.read_bytes(), spec) for p in paths])
    return pixels, reference.embed(pixels)


def _compare(model_dir, photos_and_reference):
    pixels, reference = photos_and_reference
    out = OpenVinoEmbedder(model_dir, threads=2).embed(pixels)
    cosine = (out.embedding * reference.embedding).sum(axis=1)
    agreement = (out.fine_probs.argmax(1) == reference.fine_probs.argmax(1)).mean()
    return out, cosine, agreement


def test_fp32_on_openvino_matches_onnx_runtime(photos_and_reference):
    out, cosine, agreement = _compare(FP32, photos_and_reference)
    assert cosine.min() > 0.9999 and agreement == 1.0
    assert np.abs(out.coarse_probs - photos_and_reference[1].coarse_probs).max() < 1e-4


def test_int8_on_openvino_stays_close_to_fp32(photos_and_reference):
    out, cosine, agreement = _compare(INT8, photos_and_reference)
    norms = np.linalg.norm(out.embedding, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)  # the normalisation stayed in fp32
    assert cosine.mean() > 0.95 and cosine.min() > 0.7 and agreement >= 0.95


def test_concurrent_callers_get_their_own_answers(photos_and_reference):
    pixels, _ = photos_and_reference
    embedder = OpenVinoEmbedder(FP32, threads=1)
    expected = [embedder.embed(pixels[i : i + 1]).embedding for i in range(4)]
    results: dict[int, np.ndarray] = {}

    def run(i):
        for _ in range(3):
            results[i] = embedder.embed(pixels[i : i + 1]).embedding

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.allclose(results[i], expected[i], atol=1e-6) for i in range(4))


def test_bulk_plan_and_bad_input():
    embedder = create_embedder("openvino", FP32, threads=2)
    plan = embedder.bulk_plan()
    assert plan.workers == 2 and plan.factory().threads == 1
    with pytest.raises(ValueError, match="expected uint8"):
        embedder.embed(np.zeros((1, 224, 224, 3), np.float32))


def test_missing_package_is_a_clear_start_up_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)
    with pytest.raises(
        RuntimeError, match=r"pip install 'openvino>=2025.3', or run on ONNX Runtime with SEESKU_INFERENCE=onnx"
    ):
        create_embedder("openvino", FP32)


def test_missing_int8_model_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="seesku quantize"):
        create_embedder("openvino", tmp_path / "product_embedder_int8")


def test_shipped_int8_manifest_records_calibration_and_gate():
    manifest, parent = ModelManifest.load(INT8), ModelManifest.load(FP32)
    q = manifest.quantization
    assert manifest.precision == "int8" and q.parent == parent.served_id
    assert q.calibration.endswith(":train") and q.calibration_photos >= 100 and len(q.calibration_checksum) == 64
    assert q.gate["passed"] and set(q.val) == {"fp32", "int8"}
    for metric in ("fine_top1", "coarse_top1"):
        assert q.val["fp32"][metric] - q.val["int8"][metric] <= q.gate["max_drop"] + 1e-9
    assert q.val["fp32"]["catalogue_r1"] - q.val["int8"]["catalogue_r1"] <= q.gate["max_r1_drop"] + 1e-9
    assert q.val["int8"]["embedding_cosine_mean"] >= q.gate["min_cosine"] >= 0.99
    assert manifest.command.startswith("seesku quantize")
