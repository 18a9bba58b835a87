"""Bulk tagging: a generated folder with a corrupt file, a tiny image and duplicates; resume; hostile zips."""

import csv
import json
import multiprocessing
import os
import shutil
import signal
import stat
import threading
import time
import zipfile
from dataclasses import dataclass

import pytest
from PIL import Image, ImageFilter

from api.catalog.ranking import CatalogueMatches
from api.settings import REPO_ROOT
from api.tagging.run import Tagger, TagOptions
from api.tagging.sources import Item, SourceError, list_items
from tests.conftest import SAMPLES, sample_catalog_subset, seesku
from vision.runtimes.onnx import OnnxRuntimeEmbedder

MODEL = REPO_ROOT / "triton_models" / "product_embedder"
PHOTOS = sorted((SAMPLES / "catalog").glob("*_*.jpg"))[:10]


@pytest.fixture(scope="module")
def embedder():
    return OnnxRuntimeEmbedder(MODEL, threads=2)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    for p in PHOTOS:
        shutil.copy(p, root / p.name)
    shutil.copy(PHOTOS[0], root / "nested" / "copy-of-first.jpg")  # an exact duplicate
    Image.open(PHOTOS[1]).resize((300, 300)).save(root / "nested" / "resized-second.png")  # a near-duplicate
    Image.open(PHOTOS[2]).filter(ImageFilter.GaussianBlur(6)).save(root / "blurred-third.jpg")
    (root / "corrupt.jpg").write_bytes(PHOTOS[3].read_bytes()[:200])
    Image.new("RGB", (24, 24), (200, 40, 40)).save(root / "tiny.png")
    return root


def read_csv(path):
    return {r["path"]: r for r in csv.DictReader(open(path, newline=""))}


def test_tag_folder(folder, tmp_path, embedder):
    out = tmp_path / "tags.csv"
    summary = Tagger(embedder, options=TagOptions(batch=4)).run(list_items(folder), out)
    rows = read_csv(out)
    assert summary.total == len(rows) == len(PHOTOS) + 5 and summary.unreadable == 1
    assert rows["corrupt.jpg"]["status"] == "unreadable" and "unreadable" in rows["corrupt.jpg"]["flags"]
    assert rows["corrupt.jpg"]["error"]
    assert "too_small" in rows["tiny.png"]["flags"].split(";")
    assert "blurry" in rows["blurred-third.jpg"]["flags"].split(";")
    assert "blurry" not in rows[PHOTOS[2].name]["flags"]
    first, second = PHOTOS[0].name, PHOTOS[1].name
    assert (
        rows[first]["duplicate_group"]
        and rows[first]["duplicate_group"] == rows["nested/copy-of-first.jpg"]["duplicate_group"]
    )
    assert rows[second]["duplicate_group"] == rows["nested/resized-second.png"]["duplicate_group"] != ""
    assert rows[first]["duplicate_group"] != rows[second]["duplicate_group"]
    assert rows[PHOTOS[5].name]["duplicate_group"] == ""
    for r in rows.values():
        if r["status"] == "ok":
            assert r["fine"] and 0 < float(r["fine_probability"]) <= 1 and r["coarse"]


@pytest.mark.slow
def test_seesku_tag_command(folder, tmp_path):
    """`seesku tag` itself: each option reaches its setting, the catalogue matches come from the data dir."""
    catalogue = tmp_path / "catalog.csv"
    sample_catalog_subset(catalogue, limit=5)
    assert seesku("catalog", "import", str(catalogue), data_dir=tmp_path / "data").returncode == 0
    out = tmp_path / "tags.csv"
    done = seesku("tag", str(folder), "--out", str(out), "--k", "2", data_dir=tmp_path / "data")
    assert done.returncode == 0, done.stderr
    assert f"tagged {len(PHOTOS) + 5} photos now" in done.stderr and "1 unreadable" in done.stderr
    assert "2 near-duplicate groups" in done.stderr
    rows = read_csv(out)
    assert rows[PHOTOS[0].name]["duplicate_group"] == rows["nested/copy-of-first.jpg"]["duplicate_group"] != ""
    assert len(rows[PHOTOS[0].name]["matches"].split(";")) == 2
    assert "blurry" not in rows[PHOTOS[0].name]["flags"]

    # each threshold lands where it belongs: a layout correlation of 0.99999 keeps only the byte-exact copy, a
    # blur threshold this high flags every readable photo
    strict = tmp_path / "strict.csv"
    done = seesku(
        "tag",
        str(folder),
        "--out",
        str(strict),
        "--k",
        "0",
        "--layout-threshold",
        "0.99999",
        "--blur-threshold",
        "1000000",
        data_dir=tmp_path / "data",
    )
    assert done.returncode == 0, done.stderr
    assert "1 near-duplicate groups" in done.stderr
    rows = read_csv(strict)
    assert rows[PHOTOS[0].name]["duplicate_group"] == rows["nested/copy-of-first.jpg"]["duplicate_group"] != ""
    assert rows["nested/resized-second.png"]["duplicate_group"] == ""
    assert all("blurry" in r["flags"] for r in rows.values() if r["status"] == "ok")
    assert all(r["matches"] == "" for r in rows.values())


def test_tag_jsonl_with_catalogue_matches(folder, tmp_path, embedder):
    out = tmp_path / "tags.jsonl"
    matcher_calls = []

    def matcher(embedding, fine_probs, k):
        matcher_calls.append(k)
        return CatalogueMatches([("p1", 0.9), ("p2", 0.5)][:k], matched=True, confidence=0.81234)

    Tagger(embedder, matcher, TagOptions(k=2, batch=8)).run(list_items(folder), out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(matcher_calls) == len(ok) and all(k == 2 for k in matcher_calls)
    assert ok[0]["matches"] == [{"product_id": "p1", "score": 0.9}, {"product_id": "p2", "score": 0.5}]
    assert ok[0]["matched"] is True and ok[0]["match_confidence"] == 0.8123


def test_stopped_run_leaves_valid_output_and_resumes(folder, tmp_path, embedder):
    out = tmp_path / "tags.csv"
    items = list_items(folder)
    tagger = Tagger(embedder, options=TagOptions(batch=4))
    calls = []

    def interrupt_after_first_batch(done, total):
        calls.append(done)
        if len(calls) == 2:  # the first call reports the starting point
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tagger.run(items, out, progress=interrupt_after_first_batch)
    partial = read_csv(out)  # parses: a valid partial file
    assert 4 <= len(partial) < len(items)
    summary = tagger.run(items, out)
    assert summary.tagged_now == len(items) - len(partial)  # the rerun skipped what was done
    final = read_csv(out)
    assert sorted(final) == sorted(i.key for i in items)
    assert final[PHOTOS[0].name]["duplicate_group"] == final["nested/copy-of-first.jpg"]["duplicate_group"] != ""


def within(seconds, fn):
    """fn()'s result or exception, failing the test if it has not returned after `seconds` (a hung pool)."""
    result = {}

    def call():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    runner = threading.Thread(target=call, daemon=True)
    runner.start()
    runner.join(seconds)
    assert not runner.is_alive(), f"no answer after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_stop_while_workers_run_ahead_returns_and_resumes(tmp_path, embedder):
    # 60 photos, batches of 4, at most 8 photos (2 batches) out with the workers: they still hold a batch when
    # the stop comes; the run must still return, having written what finished.
    root = tmp_path / "many"
    root.mkdir()
    for i in range(60):
        shutil.copy(PHOTOS[i % len(PHOTOS)], root / f"{i:02d}.jpg")
    items, out = list_items(root), tmp_path / "tags.csv"
    first_written = threading.Event()
    stopped = within(
        120,
        lambda: Tagger(embedder, options=TagOptions(batch=4, read_ahead=8)).run(
            items, out, progress=lambda done, total: done and first_written.set(), should_stop=first_written.is_set
        ),
    )
    assert stopped.tagged_now == 4  # the first batch, then the stop
    assert len(read_csv(out)) == 4
    summary = Tagger(embedder, options=TagOptions(batch=4)).run(items, out)  # resumes to the end
    assert summary.done == len(items) and summary.tagged_now == len(items) - 4 and len(read_csv(out)) == len(items)


def test_a_model_that_cannot_load_in_the_workers_fails_the_run(folder, tmp_path, embedder):
    """The workers build their own model; when that fails the run raises the error instead of waiting forever
    (a pool whose initializer raises starts new workers without end)."""
    from functools import partial

    from vision.runtimes import BulkPlan

    class Broken:
        manifest = embedder.manifest

        def bulk_plan(self):
            return BulkPlan(partial(OnnxRuntimeEmbedder, tmp_path / "no-model-here"), workers=1)

    with pytest.raises(Exception, match="no-model-here"):
        within(120, lambda: Tagger(Broken()).run(list_items(folder), tmp_path / "tags.csv"))


@dataclass(frozen=True)
class WorkerKillingItem(Item):
    """A photo whose reading kills the worker process outright, as a crashing decoder or the OOM killer would."""

    def read(self, zips=None):
        os.kill(os.getpid(), signal.SIGKILL)


def test_workers_dying_on_every_photo_stop_the_run_with_an_error(folder, tmp_path, embedder):
    items = list_items(folder)
    items = [*items[:4], *(WorkerKillingItem(f"poison-{i}.jpg", items[0].path) for i in range(4)), *items[4:]]
    out = tmp_path / "tags.csv"
    with pytest.raises(RuntimeError, match="failed on 3 photos in a row"):
        within(120, lambda: Tagger(embedder, options=TagOptions(batch=4)).run(items, out))
    rows = read_csv(out)  # a valid partial output: the first batch, and no photo blamed (a rerun tries them again)
    assert set(rows) == {i.key for i in items[:4]}


@dataclass(frozen=True)
class StallingItem(Item):
    """A photo on which its worker hangs, as a decoder stuck in a loop would."""

    def read(self, zips=None):
        time.sleep(3600)


def no_worker_left(seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not multiprocessing.active_children()


@pytest.mark.parametrize(
    "bad_item, error",
    [(WorkerKillingItem, "worker process died"), (StallingItem, "longer than 4 s")],
    ids=["kills", "stalls"],
)
def test_a_photo_that_kills_or_stalls_its_worker_is_reported_and_the_rest_are_tagged(
    folder, tmp_path, embedder, bad_item, error
):
    items = list_items(folder)
    items = [*items[:5], bad_item("bad.jpg", items[0].path), *items[5:]]
    out = tmp_path / "tags.csv"
    summary = within(120, lambda: Tagger(embedder, options=TagOptions(batch=4, stall_timeout_s=4)).run(items, out))
    rows = read_csv(out)
    assert summary.done == len(rows) == len(items) and summary.unreadable == 2
    assert rows["bad.jpg"]["status"] == "unreadable" and error in rows["bad.jpg"]["error"]
    assert {k for k, r in rows.items() if r["status"] != "ok"} == {"bad.jpg", "corrupt.jpg"}
    assert rows[PHOTOS[0].name]["duplicate_group"] == rows["nested/copy-of-first.jpg"]["duplicate_group"] != ""
    assert no_worker_left()  # a stalled worker was stopped, not left sleeping


def test_a_stop_is_seen_while_a_worker_stalls(folder, tmp_path, embedder):
    """DELETE on a job, or a server shutting down, must not wait for the stall timeout; nor may a hung worker
    outlive the run."""
    items = list_items(folder)
    items = [*items[:4], StallingItem("stall.jpg", items[0].path), *items[4:]]
    first_written, asked = threading.Event(), []

    def should_stop():  # no after the first batch is written, yes from then on: while the next one stalls
        if first_written.is_set():
            asked.append(time.monotonic())
        return len(asked) > 1

    summary = within(
        60,
        lambda: Tagger(embedder, options=TagOptions(batch=4)).run(
            items,
            tmp_path / "tags.csv",
            progress=lambda done, total: done and first_written.set(),
            should_stop=should_stop,
        ),
    )
    assert summary.done == 4 and asked[1] - asked[0] < 5  # seen within the wait, not after the 300 s stall timeout
    assert no_worker_left()


def test_state_refuses_another_input(folder, tmp_path, embedder):
    out = tmp_path / "tags.csv"
    tagger = Tagger(embedder, options=TagOptions(batch=32))
    tagger.run(list_items(folder), out, source="first")
    with pytest.raises(ValueError, match="use another --out"):
        tagger.run(list_items(folder), out, source="second")


def test_output_must_be_csv_or_jsonl(folder, tmp_path, embedder):
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        Tagger(embedder).run(list_items(folder), tmp_path / "tags.txt")


# -- sources --------------------------------------------------------------------------------------


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:  # name: a str or a ZipInfo (to set link bits)
            archive.writestr(name, data)
    return path


def test_zip_source(tmp_path, embedder):
    archive = _zip(
        tmp_path / "photos.zip",
        [("a/one.jpg", PHOTOS[0].read_bytes()), ("two.jpg", PHOTOS[1].read_bytes()), ("notes.txt", b"not a photo")],
    )
    items = list_items(archive)
    assert [i.key for i in items] == ["a/one.jpg", "two.jpg"]
    Tagger(embedder).run(items, tmp_path / "out.csv")
    assert set(read_csv(tmp_path / "out.csv")) == {"a/one.jpg", "two.jpg"}


@pytest.mark.parametrize("name", ["../evil.jpg", "/etc/evil.jpg", "a/../../evil.jpg", "C:/evil.jpg"])
def test_zip_slip_is_refused(tmp_path, name):
    archive = _zip(tmp_path / "evil.zip", [("fine.jpg", b"x"), (name, b"x")])
    with pytest.raises(SourceError, match="not allowed"):
        list_items(archive)


def test_zip_links_and_oversized_members_are_refused(tmp_path):
    link = zipfile.ZipInfo("link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(SourceError, match="is a link"):
        list_items(_zip(tmp_path / "link.zip", [(link, "/etc/passwd")]))
    with pytest.raises(SourceError, match="bytes, over"):
        list_items(_zip(tmp_path / "big.zip", [("big.jpg", b"\0" * 2048)]), max_member_bytes=1024)


def test_not_a_zip_is_refused(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"PK not really")
    with pytest.raises(SourceError, match="not a readable zip"):
        list_items(tmp_path / "fake.zip")


def test_csv_paths_outside_the_allowed_root_are_refused(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    shutil.copy(PHOTOS[0], root / "in.jpg")
    (root / "list.csv").write_text("path\nin.jpg\n../outside.jpg\n")
    with pytest.raises(SourceError, match="outside the allowed folder"):
        list_items(root / "list.csv", allowed_root=root)
    (root / "ok.csv").write_text("path\nin.jpg\n")
    assert [i.key for i in list_items(root / "ok.csv", allowed_root=root)] == ["in.jpg"]
    link = root / "sneaky.jpg"
    link.symlink_to("/etc/hostname")
    (root / "link.csv").write_text("path\nsneaky.jpg\n")
    with pytest.raises(SourceError, match="outside the allowed folder"):
        list_items(root / "link.csv", allowed_root=root)


def test_csv_without_path_column(tmp_path):
    (tmp_path / "list.csv").write_text("file\na.jpg\n")
    with pytest.raises(SourceError, match="'path' column"):
        list_items(tmp_path / "list.csv")


def test_tag_objects_gives_a_row_per_product_after_its_photo_and_resumes(tmp_path):
    """`seesku tag --objects`: a basket photo's row says how many products it holds, and each product follows
    with its box, tags and catalogue matches; a photo of one product has one; a rerun redoes nothing."""
    from tests.images import encode, sample_scene
    from vision.detection import iou_matrix

    scene, products = sample_scene(count=3, seed=9)
    single = SAMPLES / "catalog" / "Granny-Smith_004.jpg"
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "basket.jpg").write_bytes(encode(scene.image, "JPEG", quality=90))
    shutil.copy(single, folder / "apple.jpg")
    (folder / "broken.jpg").write_bytes(b"not a photo")
    catalogue = tmp_path / "catalog.csv"
    sample_catalog_subset(catalogue, keep=lambda r: r["product_id"] in {*products, "Granny-Smith"})
    assert seesku("catalog", "import", str(catalogue), data_dir=tmp_path / "data").returncode == 0

    for out in (tmp_path / "tags.csv", tmp_path / "tags.jsonl"):
        done = seesku("tag", str(folder), "--out", str(out), "--k", "1", "--objects", data_dir=tmp_path / "data")
        assert done.returncode == 0, done.stderr
        assert "tagged 3 photos now" in done.stderr and "1 unreadable" in done.stderr
        if out.suffix == ".csv":
            rows = list(csv.DictReader(open(out, newline="")))
            boxes = [[float(v) for v in r["box"].split()] for r in rows if r["object"]]
            top = [r["matches"].split(":")[0] for r in rows]
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            boxes = [r["box"] for r in rows if r.get("object")]
            top = [r["matches"][0]["product_id"] if r.get("matches") else "" for r in rows]
        paths = [(r["path"], str(r.get("object") or "")) for r in rows]
        assert paths == [
            ("apple.jpg", ""),
            ("apple.jpg", "1"),
            ("basket.jpg", ""),
            *[("basket.jpg", str(j)) for j in (1, 2, 3)],
            ("broken.jpg", ""),
        ]
        assert str(rows[2]["objects"]) == "3" and str(rows[0]["objects"]) == "1"
        assert top[1] == "Granny-Smith"
        overlaps = iou_matrix(scene.boxes, boxes[1:])
        for j, product in enumerate(products):
            assert overlaps[j].max() >= 0.5 and top[3 + int(overlaps[j].argmax())] == product

    again = seesku(
        "tag", str(folder), "--out", str(tmp_path / "tags.csv"), "--k", "1", "--objects", data_dir=tmp_path / "data"
    )
    assert again.returncode == 0 and "tagged 0 photos now" in again.stderr
    # The state belongs to a run with objects: a run without them must use another --out.
    plain = seesku("tag", str(folder), "--out", str(tmp_path / "tags.csv"), "--k", "1", data_dir=tmp_path / "data")
    assert plain.returncode != 0 and "objects" in plain.stderr
