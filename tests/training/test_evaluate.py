"""`seesku eval vision` on the shipped model with a small CSV data set built from the samples."""

import csv
import json

import pytest

from api.settings import REPO_ROOT
from tests.conftest import SAMPLES
from training.compare import compare, read_predictions
from training.evaluate import evaluate, write_report

MODEL = REPO_ROOT / "triton_models" / "product_embedder"
PRODUCTS = ["Granny-Smith", "Banana", "Alpro-Fresh-Soy-Milk", "Oatly-Oat-Milk"]


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory):
    """Val photos are the catalogue photos themselves, so photo-to-catalogue R@1 must be exactly 1."""
    rows = []
    for product in PRODUCTS + ["Mystery-Product"]:
        source = product if product != "Mystery-Product" else "Yellow-Onion"
        photos = sorted((SAMPLES / "catalog").glob(f"{source}_*.jpg"))
        iconic = SAMPLES / "catalog" / f"{source}.jpg"
        rows.append({"path": str(iconic), "product_id": product, "split": "", "iconic": "1"})
        rows.append({"path": str(iconic), "product_id": product, "split": "val", "iconic": ""})
        rows += [{"path": str(p), "product_id": product, "split": "train", "iconic": ""} for p in photos]
    path = tmp_path_factory.mktemp("evaldata") / "photos.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "product_id", "split", "iconic"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_evaluate_writes_results_figure_and_report(sample_csv, tmp_path):
    result = evaluate(MODEL, sample_csv, "val", tmp_path, name="shipped", log=lambda m: None)
    metrics = result["metrics"]
    assert result["photos"] == 5 and result["unknown_to_heads"] == 1  # Mystery-Product is not a model label
    assert metrics["catalogue_r1"] == 1.0 and metrics["catalogue_r5"] == 1.0
    assert set(metrics) == {"fine_top1", "fine_top5", "coarse_top1", "catalogue_r1", "catalogue_r5", "nn1_train"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert result["throughput"]["images_per_s_batch1"] > 0 and result["throughput"]["images_per_s_batch16"] > 0
    stored = json.loads((tmp_path / "results" / "shipped-val.json").read_text())
    assert stored["metrics"] == metrics
    figure = tmp_path / result["confusion_png"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_class = list(csv.DictReader(open(tmp_path / "per_class" / "shipped-val.csv")))
    assert [r["class"] for r in per_class] == PRODUCTS + ["Mystery-Product"]

    per_photo = list(csv.DictReader(open(tmp_path / "per_photo" / "shipped-val.csv")))
    assert [r["fine"] for r in per_photo] == PRODUCTS + ["Mystery-Product"]
    known = [r for r in per_photo if r["fine"] in PRODUCTS]
    assert sum(r["fine_predicted"] == r["fine"] for r in known) / len(known) == metrics["fine_top1"]
    assert per_photo[-1]["fine_predicted"] != "Mystery-Product"  # not a class the heads know

    report = write_report(tmp_path).read_text()
    assert "shipped (val, 5 photos)" in report
    assert "| photo-to-catalogue R@1 (iconic gallery, embedding only) | 100.00 % |" in report


def test_compare_pairs_two_runs_photo_by_photo(tmp_path):
    header = "photo,fine,fine_predicted,coarse,coarse_predicted\n"
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    # 8 photos: A and B both right on 1, only B right on 6 (fine); coarse identical
    a.write_text(header + "".join(f"p{i}.jpg,X,{'X' if i == 0 else 'Y'},C,C\n" for i in range(8)))
    b.write_text(header + "".join(f"p{i}.jpg,X,{'X' if i < 7 else 'Y'},C,C\n" for i in range(8)))
    result = compare(read_predictions(a), read_predictions(b))
    assert result["photos"] == 8
    assert result["fine"] == {
        "accuracy_a": 0.125,
        "accuracy_b": 0.875,
        "only_a_right": 0,
        "only_b_right": 6,
        "mcnemar_p": 0.0312,
    }
    assert result["coarse"]["mcnemar_p"] == 1.0 and result["coarse"]["only_a_right"] == 0
    b.write_text(header + "other.jpg,X,X,C,C\n")
    with pytest.raises(ValueError, match="different photos"):
        compare(read_predictions(a), read_predictions(b))
