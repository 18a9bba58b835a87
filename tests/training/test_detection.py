"""The detector's training: targets, AP, a short run on scenes of the sample photos that resumes where it
stopped, and the export's parity with torch."""

import csv
import json
import shutil

import numpy as np
import pytest

from tests.conftest import SAMPLES, seesku
from training.detection.metrics import average_precision, match
from training.detection.train import targets
from vision.detection import Box, DetectorManifest
from vision.runtimes import create_detector


def test_a_product_gives_a_peak_at_its_centre_cell_and_its_geometry_there():
    heat, geometry, mask = targets(np.array([[0.25, 0.25, 0.75, 0.5]], np.float32), grid=8)
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert (y, x) == (3, 4) and heat[y, x] == 1.0 and mask.sum() == 1 and mask[y, x] == 1
    assert geometry[:, y, x] == pytest.approx([0.0, 0.0, np.log(4.0), np.log(2.0)])
    assert heat[0, 0] < 0.01  # far from any product


def test_average_precision_counts_misses_false_boxes_and_duplicates():
    truth = [np.array([[0, 0, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]], np.float32)]
    perfect = [[Box(0, 0, 0.4, 0.4, 0.9), Box(0.5, 0.5, 0.9, 0.9, 0.8)]]
    assert average_precision(perfect, truth) == pytest.approx(1.0)
    half = [[Box(0, 0, 0.4, 0.4, 0.9)]]
    assert average_precision(half, truth) == pytest.approx(0.5)
    false_first = [[Box(0.6, 0, 1, 0.3, 0.95), *perfect[0]]]
    assert 0.5 < average_precision(false_first, truth) < 1.0
    duplicate = [Box(0, 0, 0.4, 0.4, 0.9), Box(0.01, 0, 0.41, 0.4, 0.85)]
    assert match(duplicate, truth[0], 0.5) == [0, -1]  # a second box on a found product is a false one


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory):
    """The sample catalogue's photos as a merchant folder (a folder per product)."""
    root = tmp_path_factory.mktemp("merchant")
    for row in csv.DictReader(open(SAMPLES / "catalog.csv")):
        for i, rel in enumerate(row["images"].split(";")):
            name = "iconic.jpg" if i == 0 else f"{i}.jpg"
            (root / row["product_id"]).mkdir(exist_ok=True)
            shutil.copy(SAMPLES / rel, root / row["product_id"] / name)
    return root


@pytest.mark.slow
def test_train_stop_resume_and_export_from_the_command_line(sample_folder, tmp_path):
    run, model = tmp_path / "run", tmp_path / "product_detector"
    common = ["--data", str(sample_folder), "--out", str(run), "--steps-per-epoch", "2", "--batch", "2"]
    common += ["--input-size", "128", "--threads", "2", "--export-to", str(model)]
    first = seesku("train", "detector", *common, "--epochs", "1", "--no-export", data_dir=tmp_path)
    assert first.returncode == 0, first.stderr
    assert not (model / "manifest.json").exists()
    resumed = seesku("train", "detector", *common, "--epochs", "2", "--resume", data_dir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all("val_ap50" in h and "val_ap75" in h for h in history)
    manifest = DetectorManifest.load(model)
    assert manifest.input.size == 128 and len(manifest.version) == 12
    assert manifest.metrics["parity_max_score_diff"] <= 1e-3
    assert "--resume" in manifest.command and manifest.trained_on.startswith(sample_folder.name)
    detector = create_detector("onnx", model)
    found = detector.detect(np.zeros((2, 128, 128, 3), np.uint8), threshold=0.0)
    assert len(found) == 2 and all(len(f) <= manifest.max_objects for f in found)


def test_resume_needs_a_checkpoint(sample_folder, tmp_path):
    out = seesku("train", "detector", "--data", str(sample_folder), "--out", str(tmp_path / "none"), "--resume",
                 data_dir=tmp_path)  # fmt: skip
    assert out.returncode != 0 and "no checkpoint" in out.stderr
