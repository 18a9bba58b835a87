import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import REPO_ROOT, Settings
from triton_models.server import TritonServer, free_port  # free_port: tests import it from here
from vision.preprocess import Limits

TRITON_MAX_UPLOAD_BYTES = 1_000_000

SAMPLES = REPO_ROOT / "samples"


def sample_catalog_subset(out: Path, keep=lambda row: True, limit: int | None = None) -> list[dict]:
    """Write a catalogue CSV of the first `limit` sample products that `keep`, with absolute photo paths."""
    rows = list(csv.DictReader(open(SAMPLES / "catalog.csv")))
    chosen = [r for r in rows if keep(r)][:limit]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rows[0].keys())
        w.writeheader()
        for r in chosen:
            w.writerow({**r, "images": ";".join(str(SAMPLES / p) for p in r["images"].split(";"))})
    return chosen


def search_json(client, data: bytes, **params) -> dict:
    """POST /v1/search with the photo as a multipart upload: a 200 whose answer keeps to SearchResponse."""
    from api.schemas import SearchResponse

    resp = client.post("/v1/search", files={"image": ("photo.jpg", data, "image/jpeg")}, params=params)
    assert resp.status_code == 200, resp.text
    SearchResponse.model_validate(resp.json())
    return resp.json()


def seesku(*args, data_dir, env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The `seesku` command line, as a user runs it, on its own data dir."""
    env = {**os.environ, "SEESKU_DATA_DIR": str(data_dir), "SEESKU_ONNX_THREADS": "2", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian's package, started by scripts/postgres.sh) for the session."""
    directory = Path(tempfile.mkdtemp(prefix="seesku-pg-"))  # not under pytest's tmp: its parents are 0700
    script = str(REPO_ROOT / "scripts" / "postgres.sh")
    started = subprocess.run(
        [script, "start", str(directory), str(free_port())], capture_output=True, text=True, timeout=180
    )
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip()
    subprocess.run([script, "stop", str(directory)], timeout=60)
    shutil.rmtree(directory, ignore_errors=True)


def fresh_postgres_database(server_url: str) -> str:
    """The URL of a new, empty database on the server."""
    name = "t" + uuid.uuid4().hex[:12]
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


class MilvusServer:
    """A real Milvus server (scripts/milvus.sh: Milvus's C++ engine of the milvus-lite 2.5 wheel) on a free
    port, its data in a directory of its own; it can be stopped and started again on the same port."""

    SCRIPT = str(REPO_ROOT / "scripts" / "milvus.sh")

    def __init__(self):
        self.directory, self.port = Path(tempfile.mkdtemp(prefix="seesku-milvus-")), free_port()
        self.url = f"milvus://127.0.0.1:{self.port}"

    def start(self) -> None:
        started = subprocess.run(
            [self.SCRIPT, "start", str(self.directory), str(self.port)], capture_output=True, text=True, timeout=120
        )
        assert started.returncode == 0, started.stderr

    def stop(self) -> None:
        subprocess.run([self.SCRIPT, "stop", str(self.directory)], timeout=60)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def milvus_server():
    server = MilvusServer()
    server.start()
    yield server
    server.close()


def milvus_collection() -> str:
    """A collection prefix of its own for each test on the shared server."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str | None:
    """Each database the catalogue runs on: None for the embedded SQLite file, else a fresh PostgreSQL one."""
    if request.param == "sqlite":
        return None
    return fresh_postgres_database(request.getfixturevalue("postgres_server"))


def make_settings(data_dir: Path, **overrides) -> Settings:
    return Settings(data_dir=data_dir, onnx_threads=2, **overrides)


@pytest.fixture(scope="session")
def sample_client(tmp_path_factory):
    """One app with the sample catalogue, shared by the read-mostly API tests."""
    settings = make_settings(tmp_path_factory.mktemp("sample-data"), load_samples=True)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def empty_client(tmp_path):
    with TestClient(create_app(make_settings(tmp_path, load_samples=False))) as client:
        yield client


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory):
    """The real `tritonserver` binary (CPU, python backend) on free loopback ports, models ready; its
    preprocess model accepts photos up to TRITON_MAX_UPLOAD_BYTES (every sample photo is smaller)."""
    workdir = tmp_path_factory.mktemp("triton")
    server = TritonServer(
        workdir,
        free_port(),
        free_port(),
        free_port(),
        log_file=workdir / "triton.log",
        limits=Limits(max_bytes=TRITON_MAX_UPLOAD_BYTES),
    )
    server.start()
    yield server
    server.stop()


def start_serve(env: dict[str, str], *args: str, stdout=subprocess.DEVNULL) -> tuple[str, subprocess.Popen]:
    """`seesku serve` in a subprocess on a free port, with `env` over this environment; returns the base URL
    and the process once /readyz answers 200 (fails the test with the server's exit code otherwise)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=stdout,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"server exited with {proc.returncode}" + (f"; log: {stdout.name}" if hasattr(stdout, "name") else "")
            )
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return base, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("server did not become ready in 120 s")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """The real service: `seesku serve` in a subprocess with the sample catalogue, on a free port."""
    log = open(tmp_path_factory.mktemp("live-log") / "server.log", "w+")
    base, proc = start_serve(
        {"SEESKU_DATA_DIR": str(tmp_path_factory.mktemp("live-data")), "SEESKU_ONNX_THREADS": "2"}, stdout=log
    )
    yield base, proc
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
