"""`seesku eval channels` on three sample photos: every channel decodes upright through the serving path,
and the command reports per channel and across channels."""

import csv
import json
import subprocess

import numpy as np
import pytest

from api.settings import REPO_ROOT
from tests.conftest import SAMPLES
from training.channels import CHANNELS, channel_versions
from vision.preprocess import prepare_photo

QUERIES = sorted((SAMPLES / "queries").glob("*.jpg"))[:3]


def test_every_channel_decodes_to_the_same_upright_photo():
    original = QUERIES[0].read_bytes()
    reference = prepare_photo(original)[1].astype(np.int16)
    for name, version in channel_versions(original, list(CHANNELS)).items():
        pixels = prepare_photo(version)[1]
        # Codecs move the pixels by a few levels (JPEG at quality 40: 4.2 here); sideways, far more.
        assert np.abs(pixels - reference).mean() < 8, name
    assert np.abs(np.rot90(reference) - reference).mean() > 8  # ... which the bound above would catch


@pytest.fixture
def three_photos(tmp_path):
    path = tmp_path / "photos.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "product_id", "split"])
        writer.writerows([[str(p), p.stem.rsplit("_", 1)[0], "val"] for p in QUERIES])
    return path


def _run(*args):
    return subprocess.run(
        [str(REPO_ROOT / ".venv/bin/seesku"), "eval", "channels", *args], capture_output=True, text=True, timeout=300
    )


def test_the_command_reports_each_channel_and_their_agreement(three_photos, tmp_path):
    out = tmp_path / "channels"
    done = _run("--data", str(three_photos), "--channel", "jpeg_q40", "--channel", "phone_12mp_exif",
                "--out", str(out), "--name", "tiny")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["photos"] == 3 and list(result["channels"]) == ["original", "jpeg_q40", "phone_12mp_exif"]
    assert result["channels"]["original"]["top1"] == 1.0  # the sample queries are in the sample catalogue
    assert 0 <= result["agreement_all_channels"] <= 1 and result["worst_channel"] in result["channels"]
    assert all(f["embedding_cosine"] > 0.95 for f in result["channels"].values())
    assert json.loads((out / "tiny-val.json").read_text()) == result
    table = (out / "tiny-val.md").read_text()
    assert "| phone_12mp_exif |" in table and "photos change answer across channels" in table


def test_an_unknown_channel_is_refused(three_photos):
    done = _run("--data", str(three_photos), "--channel", "fax")
    assert done.returncode == 2 and "unknown channel" in done.stderr
