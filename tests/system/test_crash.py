"""Crash safety: kill -9 the real server during a bulk import and during an index rebuild, restart it, and
check that no acknowledged product is lost and that the vector index and the catalogue agree exactly.

`make test` runs 3 trials; `SEESKU_CRASH_TRIALS=20 pytest tests/system/test_crash.py -s` runs the 20 the
reliability figures quote."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

from api.settings import REPO_ROOT
from tests.conftest import SAMPLES, free_port

pytestmark = pytest.mark.slow
PHOTOS = sorted((SAMPLES / "catalog").glob("*.jpg"))
TRIALS = int(os.environ.get("SEESKU_CRASH_TRIALS", "3"))


def start(data_dir, port):
    env = {
        **os.environ,
        "SEESKU_DATA_DIR": str(data_dir),
        "SEESKU_LOAD_SAMPLES": "false",
        "SEESKU_ONNX_THREADS": "1",
        "SEESKU_INDEX_SAVE_INTERVAL_S": "0.2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(base, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            resp = httpx.get(f"{base}/readyz", timeout=1)
            if resp.status_code == 200:
                return resp.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server not ready")


def kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def bulk_import(base, trial, acknowledged, stop):
    """Create products with one photo each; a product counts once both calls were answered 201."""
    with httpx.Client(base_url=base, timeout=10) as client:
        for i in range(500):
            if stop.is_set():
                return
            pid = f"t{trial}-p{i:03d}"
            photo = PHOTOS[(trial * 500 + i) % len(PHOTOS)]
            try:
                created = client.post(
                    "/v1/products",
                    json={"product_id": pid, "name": pid, "fine_category": pid, "coarse_category": "crash"},
                )
                if created.status_code != 201:
                    continue
                added = client.post(
                    f"/v1/products/{pid}/images", files={"images": (photo.name, photo.read_bytes(), "image/jpeg")}
                )
                if added.status_code == 201:
                    acknowledged.append((pid, photo))
            except httpx.HTTPError:
                return  # the server died under us


def stored_images(data_dir) -> int:
    with sqlite3.connect(data_dir / "catalog.sqlite3") as conn:
        return conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]


def test_kill9_loses_no_acknowledged_product(tmp_path):
    data_dir, rng = tmp_path / "data", random.Random(0)
    acknowledged: list = []
    lost = 0
    for trial in range(TRIALS):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start(data_dir, port)
        wait_ready(base, proc)
        stop = threading.Event()
        before = len(acknowledged)
        importer = threading.Thread(target=bulk_import, args=(base, trial, acknowledged, stop))
        importer.start()
        time.sleep(rng.uniform(0.5, 2.5))
        kill9(proc)  # mid-import
        stop.set()
        importer.join()
        assert len(acknowledged) > before, "the import acknowledged nothing before the kill; the trial tests nothing"

        # A kill while the restarted server rebuilds its index from the store (snapshot removed to force it).
        for snapshot in (data_dir / "index").glob("*"):
            snapshot.unlink()
        proc = start(data_dir, port)
        time.sleep(rng.uniform(0.2, 1.5))
        kill9(proc)

        proc = start(data_dir, port)
        ready = wait_ready(base, proc)
        try:
            with httpx.Client(base_url=base, timeout=10) as client:
                for pid, photo in acknowledged:
                    product = client.get(f"/v1/products/{pid}")
                    found = client.post(
                        "/v1/search",
                        params={"k": 1, "category": pid},
                        content=photo.read_bytes(),
                        headers={"Content-Type": "image/jpeg"},
                    )
                    ok = (
                        product.status_code == 200
                        and found.status_code == 200
                        and [m["product_id"] for m in found.json()["matches"]] == [pid]
                    )
                    lost += not ok
            vectors = ready["vectors"]
        finally:
            proc.terminate()
            proc.wait()
        assert vectors == stored_images(data_dir), "the index and the catalogue disagree after the restart"
    print(f"crash trials: {TRIALS}, acknowledged products: {len(acknowledged)}, lost: {lost}")
    assert lost == 0
