"""`seesku quantize` end to end on a tiny calibration set built from the samples."""

import csv
import json
import subprocess

import pytest

from api.settings import REPO_ROOT
from tests.conftest import SAMPLES
from vision.manifest import ModelManifest

pytest.importorskip("nncf")
from training.quantize import GateFailed, quantize  # noqa: E402
from vision.runtimes.openvino import OpenVinoEmbedder  # noqa: E402

FP32 = REPO_ROOT / "triton_models" / "product_embedder"
PRODUCTS = ["Granny-Smith", "Banana", "Oatly-Oat-Milk"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    rows = []
    for product in PRODUCTS:
        photos = sorted((SAMPLES / "catalog").glob(f"{product}_*.jpg"))
        rows.append({"path": str(SAMPLES / "catalog" / f"{product}.jpg"), "product_id": product, "iconic": "1"})
        rows += [{"path": str(p), "product_id": product, "split": "train"} for p in photos[:-1]]
        rows.append({"path": str(photos[-1]), "product_id": product, "split": "val"})
    path = tmp_path_factory.mktemp("quantdata") / "photos.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "product_id", "split", "iconic"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.slow
def test_quantize_command_writes_a_gated_int8_model(tiny_data, tmp_path):
    out = tmp_path / "int8"
    done = subprocess.run(
        [str(REPO_ROOT / ".venv/bin/seesku"), "quantize", "--data", str(tiny_data), "--out", str(out),
         "--calibration", "6", "--max-drop", "0.5", "--max-r1-drop", "0.5", "--min-cosine", "0.5"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)  # stdout is the answer alone
    manifest = ModelManifest.load(out)
    q = manifest.quantization
    assert manifest.precision == "int8" and answer["served_id"] == manifest.served_id
    assert q.calibration_photos == 6 and q.calibration.endswith(":train") and q.gate["passed"]
    assert {"fine_top1", "coarse_top1", "catalogue_r1"} <= set(q.val["int8"]) and q.ignored
    assert "--calibration 6" in manifest.command
    assert OpenVinoEmbedder(out).embed(__import__("numpy").zeros((1, 224, 224, 3), "uint8")).embedding.shape == (1, 512)


def test_a_failed_gate_writes_nothing(tiny_data, tmp_path):
    out = tmp_path / "int8"
    with pytest.raises(GateFailed):
        # A drop below zero cannot be met: the gate must refuse, and leave no folder behind.
        quantize(FP32, tiny_data, out, calibration=4, max_drop=-1.0, log=lambda m: None)
    assert not out.exists()


def test_embeddings_far_from_fp32_fail_the_gate_even_when_accuracy_holds(tiny_data, tmp_path):
    out = tmp_path / "int8"
    # Any drop allowed, but int8 never reproduces fp32 exactly: the cosine criterion alone must refuse.
    with pytest.raises(GateFailed, match="min_cosine"):
        quantize(FP32, tiny_data, out, calibration=4, max_drop=1.0, max_r1_drop=1.0, min_cosine=1.0, log=lambda m: None)
    assert not out.exists()


def test_an_int8_model_is_not_quantized_again(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="already int8"):
        quantize(REPO_ROOT / "triton_models" / "product_embedder_int8", tiny_data, tmp_path / "x", log=lambda m: None)
