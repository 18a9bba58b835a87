"""The rules that exist once, each read the same way by every caller (vision/ holds them for all layers)."""

import ast
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLES
from vision.catalog_csv import read_catalog_csv
from vision.files import atomic_path, atomic_write
from vision.recommender import CHANNELS, EVENT_TYPES, Event, encode, read_events_csv

ROOT = Path(__file__).resolve().parents[2]
CODE = [
    p
    for package in ("api", "vision", "training", "triton_models", "bench", "scripts")
    for p in (ROOT / package).rglob("*.py")
]


def calls_in(path: Path, name: str, with_arguments: bool = False) -> int:
    """How often the module calls something named `name`: a function or method (`open_image`), or, when
    dotted, an attribute of a name (`os.replace`); `with_arguments`: only calls that pass some."""
    owner, _, name = name.rpartition(".")
    count = 0
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            of = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            passes = bool(node.args or node.keywords) or not with_arguments
            count += called == name and (not owner or of == owner) and passes
    return count


@pytest.fixture
def local_time_is_not_utc():
    """The machine's local time zone set to UTC-5, so that a naive timestamp read as local time shows."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "EST+05"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_events_csv_naive_timestamps_are_utc_for_the_service_and_the_trainer(tmp_path, local_time_is_not_utc):
    from api.catalog.csv_io import import_events_csv
    from api.catalog.service import CatalogService
    from tests.conftest import make_settings
    from training.recommender.data import read_events_file

    csv_file = tmp_path / "events.csv"
    csv_file.write_text(
        "# shopper events\nuser_id,product_id,type,channel,timestamp,event_id\n"
        "u1,Banana,view,app,2026-01-02T03:04:05,e1\n"
        "u1,Oatly-Oat-Milk,purchase,web,2026-01-02T03:04:05+01:00,e2\n"
    )
    events = read_events_csv(csv_file)
    utc = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert [e.ts for e in events] == [utc - 3600, utc]  # in time order: the +01:00 one is the earlier
    service = CatalogService(make_settings(tmp_path / "data", load_samples=False))
    service.open()
    try:
        from api.catalog.csv_io import import_catalog_csv

        import_catalog_csv(service, SAMPLES / "catalog.csv")
        assert import_events_csv(service, csv_file) == 2
        assert [(e.product_id, e.ts) for e in service.store.history("u1")] == [(e.product_id, e.ts) for e in events]
    finally:
        service.close()
    sequences = read_events_file(csv_file)  # the trainer's order is the service's
    assert [sequences.vocabulary[i - 1] for i in sequences.items[0]] == [e.product_id for e in events]


def test_catalogue_csv_has_one_reader_for_the_service_and_the_export(tmp_path):
    from vision.export import read_catalog_photos

    csv_file = tmp_path / "catalog.csv"
    csv_file.write_bytes(
        "\ufeffproduct_id,name,fine_category,coarse_category,images\n"
        " Apfel ,Äpfel,Apple-Fine,Apple, a.jpg ; b.jpg;\n".encode("utf-8")
    )
    (row,) = read_catalog_csv(csv_file)
    assert (row.product_id, row.name, row.description, row.images) == ("Apfel", "Äpfel", "", ["a.jpg", "b.jpg"])
    photos = read_catalog_photos(csv_file)
    assert [p.path for p in photos] == [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    assert {(p.fine, p.coarse) for p in photos} == {("Apple-Fine", "Apple")}
    csv_file.write_text("product_id,name\nx,y\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_catalog_csv(csv_file)


def test_channels_and_event_types_of_the_api_are_the_models():
    from typing import get_args

    from api.schemas import Channel, EventType

    assert [c.value for c in Channel] == CHANNELS[1:]
    assert list(get_args(EventType)) == EVENT_TYPES[1:]
    inputs = encode(
        [Event("u", "a", "cart", "kiosk", 1.0), Event("u", "b", "teleport", "fax", 2.0)], {"a": 1, "b": 2}, 5
    )
    assert inputs["channels"].tolist() == [[CHANNELS.index("kiosk"), 0]]  # unknown: 0, as padding
    assert inputs["types"].tolist() == [[EVENT_TYPES.index("cart"), 0]]


def test_one_decode_path_gives_every_caller_the_same_pixels():
    """Search, catalogue writes and bulk tagging all call prepare_photo; load_image is its pixels."""
    from vision.preprocess import InputSpec, load_image, prepare_photo

    data = (SAMPLES / "catalog" / "Banana.jpg").read_bytes()
    header, pixels = prepare_photo(data, InputSpec())
    assert header.content_type == "image/jpeg" and min(header.width, header.height) > 0
    np.testing.assert_array_equal(pixels, load_image(data, InputSpec()))
    callers = {p.relative_to(ROOT).as_posix() for p in CODE if calls_in(p, "prepare_photo")}
    assert {"api/catalog/service.py", "api/tagging/workers.py"} <= callers
    for path in CODE:  # nothing else opens and decodes photos its own way
        rel = path.relative_to(ROOT).as_posix()
        if rel != "vision/preprocess.py":
            assert not calls_in(path, "decode_opened") and not calls_in(path, "open_image"), rel


def test_upload_limits_come_from_the_settings_everywhere(tmp_path):
    from api.catalog.service import CatalogService
    from tests.conftest import make_settings
    from triton_models.server import prepare_repository

    settings = make_settings(tmp_path, max_upload_bytes=12345, max_image_pixels=678_000)
    assert CatalogService(settings).limits == settings.limits()
    repository = prepare_repository(tmp_path / "models", limits=settings.limits())
    config = (repository / "preprocess" / "config.pbtxt").read_text()
    assert 'key: "max_upload_bytes" value: { string_value: "12345" }' in config
    assert 'key: "max_image_pixels" value: { string_value: "678000" }' in config
    for path in CODE:
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("api/"):
            assert rel == "api/settings.py" or not calls_in(path, "Limits", True), f"{rel} builds its own limits"


def test_onnx_sessions_and_atomic_writes_have_one_home():
    for path in CODE:
        rel = path.relative_to(ROOT).as_posix()
        if rel != "vision/runtimes/onnx.py":
            assert not calls_in(path, "InferenceSession") and not calls_in(path, "SessionOptions"), rel
        if rel not in ("vision/files.py", "scripts/build_trt.py"):  # the TensorRT plan is written on the GPU host
            assert not calls_in(path, "os.fsync") and not calls_in(path, "os.replace"), rel


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]
    atomic_write(target, "new")
    assert target.read_text() == "new"


def test_resume_continues_the_saved_recipe_and_refuses_another_run(tmp_path):
    torch = pytest.importorskip("torch")
    from training.checkpoints import resume_state, save_atomically

    last = tmp_path / "last.pt"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resume_state(last, {}, (), ())
    save_atomically({"config": {"data": "a", "lr": 0.1, "epochs": 5, "threads": 2}, "weights": torch.ones(1)}, last)
    state, recipe = resume_state(
        last, {"data": "a", "lr": 0.5, "epochs": 9, "threads": 1}, ("data",), ("epochs", "threads")
    )
    assert recipe == {"data": "a", "lr": 0.1, "epochs": 9, "threads": 1} and state["weights"].item() == 1.0
    with pytest.raises(ValueError, match="different data"):
        resume_state(last, {"data": "b"}, ("data",), ())
