"""The tagging jobs API: zip and CSV jobs, progress, results, cancel, restart, hostile uploads."""

import csv
import io
import time
import zipfile

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.conftest import SAMPLES, make_settings

PHOTOS = sorted((SAMPLES / "catalog").glob("*_*.jpg"))


def zip_bytes(members) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buf.getvalue()


def photos_zip(n: int, duplicate: bool = True) -> bytes:
    members = [(f"shelf/{p.name}", p.read_bytes()) for p in PHOTOS[:n]]
    if duplicate:
        members.append(("shelf/again.jpg", PHOTOS[0].read_bytes()))
    return zip_bytes(members)


def wait(client, job_id, states=("done", "failed", "cancelled"), timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/tagging/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s")


def submit(client, body: bytes, content_type="application/zip", **params):
    return client.post("/v1/tagging/jobs", content=body, headers={"Content-Type": content_type}, params=params)


@pytest.fixture
def client(tmp_path):
    root = tmp_path / "shared-photos"
    root.mkdir()
    for p in PHOTOS[:3]:
        (root / p.name).write_bytes(p.read_bytes())
    settings = make_settings(
        tmp_path / "data", load_samples=False, tagging_root=root, max_tagging_upload_bytes=15_000_000
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_zip_job_runs_to_completion(client):
    resp = submit(client, photos_zip(4))
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/v1/tagging/jobs/{job['id']}" and job["total"] == 5
    job = wait(client, job["id"])
    assert job["state"] == "done" and job["done"] == 5 and job["duplicate_groups"] == 1
    rows = list(csv.DictReader(io.StringIO(client.get(job["results_url"]).text)))
    assert sorted(r["path"] for r in rows) == sorted([f"shelf/{p.name}" for p in PHOTOS[:4]] + ["shelf/again.jpg"])
    lines = client.get(job["results_url"], params={"format": "jsonl"}).text.splitlines()
    assert len(lines) == 5
    groups = client.get(f"/v1/tagging/jobs/{job['id']}/duplicates").json()["groups"]
    assert len(groups) == 1 and sorted(groups[0]["photos"]) == sorted([f"shelf/{PHOTOS[0].name}", "shelf/again.jpg"])
    thumb = client.get(groups[0]["thumbnail_urls"][0])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert any(j["id"] == job["id"] for j in client.get("/v1/tagging/jobs").json()["jobs"])


def test_csv_job_reads_under_the_allowed_root(client):
    body = "path\n" + "\n".join(p.name for p in PHOTOS[:3]) + "\n"
    job = wait(client, submit(client, body.encode(), "text/csv").json()["id"])
    assert job["state"] == "done" and job["done"] == 3


@pytest.mark.parametrize(
    "body, content_type, status, code",
    [
        (
            zip_bytes([("ok.jpg", b"x"), ("../../etc/cron.d/evil.jpg", b"x")]),
            "application/zip",
            400,
            "bad_tagging_input",
        ),
        (zip_bytes([("/abs/evil.jpg", b"x")]), "application/zip", 400, "bad_tagging_input"),
        (b"PK\x03\x04 not a zip", "application/zip", 400, "bad_tagging_input"),
        (zip_bytes([("notes.txt", b"hello")]), "application/zip", 400, "bad_tagging_input"),
        (b"path\n../../etc/passwd\n", "text/csv", 400, "bad_tagging_input"),
        (b"path\n/etc/passwd\n", "text/csv", 400, "bad_tagging_input"),
        (b"file\na.jpg\n", "text/csv", 400, "bad_tagging_input"),
        (b"", "application/zip", 400, "empty_upload"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_bad_uploads_are_refused(client, body, content_type, status, code):
    resp = submit(client, body, content_type)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code and resp.json()["error"]["message"]
    assert client.get("/v1/tagging/jobs").json()["jobs"] == []  # nothing half-created
    assert client.get("/healthz").status_code == 200


def test_oversized_upload_is_refused_while_streaming(client):
    def chunks():  # no Content-Length: the limit must hold on the stream itself
        for _ in range(40):
            yield b"\0" * 500_000

    resp = client.post("/v1/tagging/jobs", content=chunks(), headers={"Content-Type": "application/zip"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "upload_too_large"
    assert not [p for p in (client.app.state.settings.data_dir / "jobs").glob("upload-*")]


def test_unknown_job_and_cancel_of_finished_job(client):
    assert client.get("/v1/tagging/jobs/nope").status_code == 404
    assert client.delete("/v1/tagging/jobs/nope").status_code == 404
    job = wait(client, submit(client, photos_zip(1, duplicate=False)).json()["id"])
    resp = client.delete(f"/v1/tagging/jobs/{job['id']}")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "job_finished"


def test_cancel_stops_a_job(client):
    many = zip_bytes([(f"p{i:03d}.jpg", PHOTOS[i % len(PHOTOS)].read_bytes()) for i in range(300)])
    job = submit(client, many).json()
    assert client.delete(f"/v1/tagging/jobs/{job['id']}").status_code == 200
    job = wait(client, job["id"])
    assert job["state"] == "cancelled" and job["done"] < 300


def test_jobs_survive_a_restart(tmp_path):
    settings = make_settings(tmp_path / "data", load_samples=False)
    many = zip_bytes([(f"p{i:03d}.jpg", PHOTOS[i % len(PHOTOS)].read_bytes()) for i in range(200)])
    with TestClient(create_app(settings)) as client:
        job = submit(client, many).json()
        wait(client, job["id"], states=("running",))
        while client.get(f"/v1/tagging/jobs/{job['id']}").json()["done"] == 0:
            time.sleep(0.1)
    # The server stopped mid-job: the job is queued again, with what it had done kept.
    with TestClient(create_app(settings)) as client:
        done = wait(client, job["id"])
        assert done["state"] == "done" and done["done"] == 200
        rows = list(csv.DictReader(io.StringIO(client.get(done["results_url"]).text)))
        assert len(rows) == 200 and len({r["path"] for r in rows}) == 200


def test_jobs_run_on_the_servers_worker_setting(tmp_path):
    """SEESKU_TAGGING_WORKERS decides, whatever a job's saved options say; 0 is the runtime's own plan."""
    from api.tagging.run import TagOptions

    with TestClient(create_app(make_settings(tmp_path / "one", load_samples=False, tagging_workers=1))) as client:
        assert client.app.state.jobs.tagger_factory(TagOptions(workers=3)).workers == 1
    with TestClient(create_app(make_settings(tmp_path / "all", load_samples=False))) as client:
        service = client.app.state.service
        assert (
            client.app.state.jobs.tagger_factory(TagOptions(workers=1)).workers == service.embedder.bulk_plan().workers
        )
