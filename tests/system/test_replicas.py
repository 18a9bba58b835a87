"""Two `seesku serve` replicas on two ports over one PostgreSQL and one Milvus (real servers, started by the
session's fixtures), as a deployment runs them: what one replica acknowledged, the other answers with, at
once. Also PostgreSQL with each replica's own FAISS index, which follows the catalogue's change log."""

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from api.settings import REPO_ROOT
from tests.conftest import (
    SAMPLES,
    MilvusServer,
    free_port,
    fresh_postgres_database,
    milvus_collection,
    seesku,
    start_serve,
)

pytestmark = pytest.mark.slow
PHOTOS = sorted((SAMPLES / "catalog").glob("*.jpg"))


class Replicas:
    """Replicas A and B of one deployment: one database, one index, each its own (empty) data dir."""

    def __init__(self, tmp_path: Path, database_url: str, index: str, **env: str):
        self.tmp_path = tmp_path
        self.env = {
            "SEESKU_DATABASE_URL": database_url,
            "SEESKU_INDEX": index,
            "SEESKU_MILVUS_COLLECTION": milvus_collection(),
            "SEESKU_ONNX_THREADS": "1",
            "SEESKU_LOAD_SAMPLES": "false",
            **env,
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}

    def start(self, name: str, **env: str) -> httpx.Client:
        data_dir = self.tmp_path / name
        log = open(self.tmp_path / f"{name}.log", "a")
        base, proc = start_serve({**self.env, "SEESKU_DATA_DIR": str(data_dir), **env}, stdout=log)
        self.procs[name], self.urls[name] = proc, base
        return httpx.Client(base_url=base, timeout=30)

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(timeout=30)


@pytest.fixture(params=["milvus", "faiss"])
def replicas(request, tmp_path, postgres_server):
    index = request.getfixturevalue("milvus_server").url if request.param == "milvus" else "faiss"
    deployment = Replicas(tmp_path, fresh_postgres_database(postgres_server), index)
    yield deployment
    deployment.close()


def new_product(client: httpx.Client, pid: str, photo: Path, fine: str | None = None) -> None:
    body = {"product_id": pid, "name": pid, "fine_category": fine or pid, "coarse_category": "replicas"}
    assert client.post("/v1/products", json=body).status_code == 201
    added = client.post(f"/v1/products/{pid}/images", files={"images": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert added.status_code == 201, added.text


def search(client: httpx.Client, photo: Path, **params) -> httpx.Response:
    return client.post("/v1/search", params=params, content=photo.read_bytes(), headers={"Content-Type": "image/jpeg"})


def test_what_a_acknowledges_b_answers_with_at_once(replicas):
    a, b = replicas.start("a"), replicas.start("b")
    photos = PHOTOS[:12]
    first_try = 0
    for i, photo in enumerate(photos):
        new_product(a, f"r{i}", photo)
        found = search(b, photo, k=1).json()["matches"]  # right after A's 201, on the other replica
        first_try += [m["product_id"] for m in found] == [f"r{i}"]
    assert first_try == len(photos)  # 100 % on the first try

    assert b.get("/v1/products/r3").json()["name"] == "r3"
    assert a.patch("/v1/products/r3", json={"name": "renamed"}).status_code == 200
    assert b.get("/v1/products/r3").json()["name"] == "renamed"

    assert a.delete("/v1/products/r5").status_code == 204
    for _ in range(5):  # never again, once the delete was acknowledged
        found = search(b, photos[5], k=10).json()["matches"]
        assert "r5" not in [m["product_id"] for m in found]
    assert b.get("/v1/products/r5").status_code == 404
    assert b.delete("/v1/products/r6").status_code == 204
    assert "r6" not in [m["product_id"] for m in search(a, photos[6], k=10).json()["matches"]]


def test_events_through_a_change_history_and_ranking_on_b(tmp_path, postgres_server, milvus_server):
    deployment = Replicas(tmp_path, fresh_postgres_database(postgres_server), milvus_server.url)
    try:
        a = deployment.start("a", SEESKU_LOAD_SAMPLES="true")  # the sample catalogue the shopper model knows
        b = deployment.start("b")
        photo = PHOTOS[0]
        before = search(b, photo, k=5, user_id="shopper-1").json()["matches"]
        assert all(m["personal_score"] is None for m in before)  # no history yet: not personalised
        products = [m["product_id"] for m in before]
        events = [
            {
                "user_id": "shopper-1",
                "product_id": pid,
                "type": "view",
                "channel": "app",
                "event_id": f"e{i}",
                "timestamp": f"2026-12-03T08:0{i}:00Z",
            }
            for i, pid in enumerate(products[1:3])
        ]
        assert a.post("/v1/events", json={"events": events}).status_code == 200
        history = b.get("/v1/users/shopper-1/history").json()["events"]
        assert [e["product_id"] for e in history] == products[1:3]
        after = search(b, photo, k=5, user_id="shopper-1").json()["matches"]
        assert any(m["personal_score"] is not None for m in after)
    finally:
        deployment.close()


def test_keys_and_the_rate_limit_are_shared(tmp_path, postgres_server, milvus_server):
    deployment = Replicas(
        tmp_path,
        fresh_postgres_database(postgres_server),
        milvus_server.url,
        SEESKU_REQUIRE_KEYS="true",
        SEESKU_RATE_LIMIT_PER_S="0.01",
        SEESKU_RATE_LIMIT_BURST="6",
    )
    try:
        a, b = deployment.start("a"), deployment.start("b")
        created = seesku(
            "keys", "create", "--name", "kiosk", "--scope", "search", data_dir=tmp_path / "a", env_extra=deployment.env
        )
        assert created.returncode == 0, created.stderr
        token = next(w for w in created.stdout.split() if w.startswith("sk_"))
        headers = {"X-API-Key": token}
        answers = [client.get("/v1/categories", headers=headers).status_code for client in (a, b) * 4]
        assert answers == [200] * 6 + [429] * 2  # one bucket of 6 for both replicas, not 6 each
        limited = b.get("/v1/categories", headers=headers)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1

        key_id = token.split("_")[1]
        revoked = seesku("keys", "revoke", key_id, data_dir=tmp_path / "b", env_extra=deployment.env)
        assert revoked.returncode == 0, revoked.stderr
        assert a.get("/v1/categories", headers=headers).status_code == 401
    finally:
        deployment.close()


def test_postgres_or_milvus_down_is_503_then_both_replicas_recover(tmp_path):
    """Servers of this test's own, stopped mid-traffic: every answer is a 200 or the documented 503 with
    Retry-After, nothing is half-written, and both replicas recover by themselves."""
    pg_dir = Path(tempfile.mkdtemp(prefix="seesku-pg-"))
    pg_script, pg_port = str(REPO_ROOT / "scripts" / "postgres.sh"), str(free_port())
    url = subprocess.run([pg_script, "start", str(pg_dir), pg_port], capture_output=True, text=True, check=True)
    milvus = MilvusServer()
    milvus.start()
    deployment = Replicas(tmp_path, url.stdout.strip(), milvus.url, SEESKU_INDEX_TIMEOUT_S="1")
    try:
        a, b = deployment.start("a"), deployment.start("b")
        new_product(a, "before", PHOTOS[0])
        for stop, start in (
            (lambda: milvus.stop(), lambda: milvus.start()),
            (
                lambda: subprocess.run([pg_script, "stop", str(pg_dir)], check=True),
                lambda: subprocess.run([pg_script, "start", str(pg_dir), pg_port], check=True, capture_output=True),
            ),
        ):
            stop()
            for client in (a, b):
                for answer in (
                    search(client, PHOTOS[0], k=1),
                    client.post(
                        "/v1/products",
                        json={"product_id": "during", "name": "x", "fine_category": "x", "coarse_category": "x"},
                    ),
                ):
                    assert answer.status_code == 503, answer.text
                    assert answer.headers["Retry-After"] == "1"
                    assert answer.json()["error"]["code"] in ("index_unavailable", "database_unavailable")
            start()
            for client in (a, b):
                assert client.get("/v1/products/during").status_code == 404  # nothing half-written
                found = search(client, PHOTOS[0], k=1)
                assert found.status_code == 200, found.text
                assert [m["product_id"] for m in found.json()["matches"]] == ["before"]
        new_product(b, "after", PHOTOS[1])
        assert [m["product_id"] for m in search(a, PHOTOS[1], k=1).json()["matches"]] == ["after"]
    finally:
        deployment.close()
        milvus.close()
        subprocess.run([pg_script, "stop", str(pg_dir)])
        os.system(f"rm -rf {pg_dir}")


KILL_TRIALS = int(os.environ.get("SEESKU_REPLICA_KILL_TRIALS", "20"))


def import_until_killed(client: httpx.Client, trial: int, acknowledged: list, errors: list, stop) -> None:
    """Products with one photo each through one replica; one counts once both calls were answered 201."""
    for i in range(1000):
        if stop.is_set():
            return
        pid, photo = f"k{trial}-{i:03d}", PHOTOS[(trial * 7 + i) % len(PHOTOS)]
        try:
            body = {"product_id": pid, "name": pid, "fine_category": pid, "coarse_category": "kill"}
            created = client.post("/v1/products", json=body)
            added = client.post(
                f"/v1/products/{pid}/images", files={"images": (photo.name, photo.read_bytes(), "image/jpeg")}
            )
        except httpx.HTTPError:
            return  # the replica died under us
        errors.extend(r.status_code for r in (created, added) if r.status_code >= 500)
        if created.status_code == 201 and added.status_code == 201:
            acknowledged.append((pid, photo))


def test_sigkill_of_a_replica_mid_import_loses_no_acknowledged_write(replicas):
    import random
    import threading
    import time

    rng, acknowledged, errors = random.Random(0), [], []
    b = replicas.start("b")
    lost = 0
    for trial in range(KILL_TRIALS):
        a = replicas.start("a")
        stop, before = threading.Event(), len(acknowledged)
        importer = threading.Thread(target=import_until_killed, args=(a, trial, acknowledged, errors, stop))
        importer.start()
        time.sleep(rng.uniform(0.5, 2.0))
        replicas.kill("a")  # SIGKILL, mid-import
        stop.set()
        importer.join()
        assert len(acknowledged) > before, "nothing was acknowledged before the kill: the trial tests nothing"
        for pid, photo in acknowledged[before:]:  # through the replica that stayed up
            found = search(b, photo, k=1, category=pid)
            errors.extend([found.status_code] if found.status_code >= 500 else [])
            lost += found.status_code != 200 or [m["product_id"] for m in found.json()["matches"]] != [pid]
    print(f"replica kill trials: {KILL_TRIALS}, acknowledged products: {len(acknowledged)}, lost: {lost}")
    assert lost == 0 and errors == []
    engine = sqlalchemy.create_engine(replicas.env["SEESKU_DATABASE_URL"])
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT count(*) FROM images").scalar()
    engine.dispose()
    # The index and the catalogue agree exactly: a photo whose replica died between its commit and its index
    # write (never acknowledged) is indexed by the replica that stayed up, once the change is a few seconds old.
    deadline = time.monotonic() + 30
    while (vectors := b.get("/readyz").json()["vectors"]) != stored and time.monotonic() < deadline:
        time.sleep(0.5)
    assert vectors == stored


TAGGED = 2000


def test_a_tagging_job_whose_replica_is_killed_finishes_on_the_other(tmp_path, postgres_server, milvus_server):
    import io
    import time
    import zipfile

    deployment = Replicas(
        tmp_path, fresh_postgres_database(postgres_server), milvus_server.url, SEESKU_TAGGING_LEASE_S="3"
    )
    try:
        a = deployment.start("a")
        upload = io.BytesIO()
        with zipfile.ZipFile(upload, "w") as z:
            # Long enough to be killed part-way while B starts: 400 photos were done before B was up once the
            # int8 model became the default (about 2x ONNX Runtime's rate).
            for i in range(TAGGED):
                z.writestr(f"shelf/{i:04d}.jpg", PHOTOS[i % 200].read_bytes())  # each photo ten times
        created = a.post("/v1/tagging/jobs", content=upload.getvalue(), headers={"Content-Type": "application/zip"})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 120
        while (job := a.get(f"/v1/tagging/jobs/{job_id}").json())["done"] < 32:
            assert time.monotonic() < deadline and job["state"] in ("queued", "running"), job
            time.sleep(0.1)
        b = deployment.start("b")  # started after A took the job: B can only get it from a dead A
        assert b.get(f"/v1/tagging/jobs/{job_id}").json()["state"] == "running"  # B sees A's progress
        workers = children(deployment.procs["a"].pid)  # A's spawned decode-and-embed workers
        assert workers
        deployment.kill("a")
        killed_at = b.get(f"/v1/tagging/jobs/{job_id}").json()["done"]
        assert 0 < killed_at < TAGGED
        deadline = time.monotonic() + 300
        while (job := b.get(f"/v1/tagging/jobs/{job_id}").json())["state"] != "done":
            assert time.monotonic() < deadline and job["state"] in ("queued", "running"), job
            time.sleep(0.2)
        assert job["done"] == job["total"] == TAGGED
        lines = b.get(f"/v1/tagging/jobs/{job_id}/results", params={"format": "jsonl"}).text.splitlines()
        paths = sorted(json.loads(line)["path"] for line in lines)
        assert paths == sorted(f"shelf/{i:04d}.jpg" for i in range(TAGGED))  # every photo, once
        groups = b.get(f"/v1/tagging/jobs/{job_id}/duplicates").json()["groups"]
        assert len(groups) >= 150  # the repeats were found, across both replicas' halves
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # they went with A
        print(f"tagging job: A killed at {killed_at}/{TAGGED}, finished on B")
    finally:
        deployment.close()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_model_switch_asked_of_a_reaches_b_and_both_find_every_photo(replicas):
    """The int8 embedder to the fp32 one on both replicas: asked of A, followed by B on its own; a photo B
    adds while the switch is under way (with the old version's vector) is embedded for the new one, and
    both replicas find every photo."""
    fp32 = str(REPO_ROOT / "triton_models" / "product_embedder")
    a, b = replicas.start("a"), replicas.start("b")
    for i, photo in enumerate(PHOTOS[:6]):
        new_product(a, f"s{i}", photo)
    assert a.put("/v1/models/vision", json={"model_dir": fp32}).status_code == 202
    new_product(b, "added-meanwhile", PHOTOS[6])
    for client in (a, b):
        deadline = time.monotonic() + 120
        while (state := client.get("/v1/models").json()["vision"])["model_dir"] != fp32 or state["state"] != "serving":
            assert time.monotonic() < deadline and state["state"] != "failed", state
            time.sleep(0.2)
    for client in (a, b):
        for i, photo in enumerate(PHOTOS[:7]):
            answer = search(client, photo, k=1).json()
            assert answer["model"]["id"] == "seesku-efficientnet-lite0-ft"
            assert answer["matches"][0]["product_id"] == (f"s{i}" if i < 6 else "added-meanwhile")
