"""Several replicas against the embedded default, in one run: search latency and cross-replica visibility.

    python bench/replicas.py                # starts PostgreSQL and Milvus (scripts/), then the servers

1. `/v1/search` p50 at concurrency 1 on the sample catalogue, three servers measured in interleaved
   rounds (machine noise hits all alike): the embedded default (SQLite + FAISS), PostgreSQL + FAISS, and
   PostgreSQL + Milvus. The ratio to the embedded default is the headline; each server's own timings
   (`server_ms`: decode, embed, search = catch-up + index + ranking) say where the gap goes, and
   PostgreSQL + FAISS separates the database's share from Milvus's.
2. Upload on A, first hit on B: for PostgreSQL + Milvus and PostgreSQL + FAISS, a product with a photo is
   created through replica A; the moment A answers 201, replica B is searched with the photo until it
   ranks first. Reports the tries it took (1 = read-your-writes on the first try) and the milliseconds.
3. The background follow (PostgreSQL + FAISS): with no search to make B catch up, the time from A's 201 to
   B's index holding the photo (B's /readyz `vectors`), the bound for reads that do not catch up first.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from common import QUERY_PHOTOS, ROOT, emit
from search_e2e import load, start_server

CATALOG_PHOTOS = sorted((ROOT / "samples" / "catalog").glob("*.jpg"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Servers:
    """PostgreSQL and Milvus from scripts/, in temporary directories, stopped at the end."""

    def __init__(self):
        self.pg_dir = Path(tempfile.mkdtemp(prefix="seesku-pg-"))
        self.milvus_dir = Path(tempfile.mkdtemp(prefix="seesku-milvus-"))
        self.pg_url = self._run("postgres.sh", "start", self.pg_dir, free_port())
        self.milvus_url = self._run("milvus.sh", "start", self.milvus_dir, free_port())
        self._databases = 0

    @staticmethod
    def _run(script: str, *args) -> str:
        out = subprocess.run([str(ROOT / "scripts" / script), *map(str, args)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr)
        return out.stdout.strip()

    def database(self) -> str:
        """A new database on the server."""
        import sqlalchemy

        self._databases += 1
        name = f"bench{int(time.time())}_{self._databases}"
        engine = sqlalchemy.create_engine(self.pg_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.pg_url.rsplit("/", 1)[0] + "/" + name

    def close(self) -> None:
        self._run("milvus.sh", "stop", self.milvus_dir)
        self._run("postgres.sh", "stop", self.pg_dir)
        shutil.rmtree(self.milvus_dir, ignore_errors=True)
        shutil.rmtree(self.pg_dir, ignore_errors=True)


def search_latency(servers: dict[str, str], rounds: int, per_round: int) -> dict:
    photos = [p.read_bytes() for p in QUERY_PHOTOS]
    for url in servers.values():
        load(url, photos, 1, 20)  # warm-up
    p50s: dict[str, list[float]] = {name: [] for name in servers}
    timings: dict[str, list[dict]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, url in servers.items():
            result = load(url, photos, 1, per_round)
            assert result["errors"] == 0, result
            p50s[name].append(result["p50_ms"])
            timings[name].append(result["server_ms"])
    out = {}
    for name in servers:
        out[name] = {
            "p50_ms_median_of_rounds": round(statistics.median(p50s[name]), 2),
            "p50_ms_each_round": p50s[name],
            "server_ms": {key: round(statistics.median(t[key] for t in timings[name]), 3) for key in timings[name][0]},
        }
    base = out["embedded"]["p50_ms_median_of_rounds"]
    for name in servers:
        out[name]["p50_over_embedded"] = round(out[name]["p50_ms_median_of_rounds"] / base, 3)
        out[name]["p50_over_embedded_each_round"] = [round(a / b, 3) for a, b in zip(p50s[name], p50s["embedded"])]
    return out


def upload_to_hit(a: str, b: str, tag: str, products: int) -> dict:
    """Create products through A; after each 201, search B until the product ranks first."""
    tries, waits = [], []
    with httpx.Client(base_url=a, timeout=30) as ca, httpx.Client(base_url=b, timeout=30) as cb:
        for i in range(products):
            pid, photo = f"{tag}-{i}", CATALOG_PHOTOS[i % len(CATALOG_PHOTOS)]
            body = {"product_id": pid, "name": pid, "fine_category": pid, "coarse_category": "bench"}
            assert ca.post("/v1/products", json=body).status_code == 201
            data = photo.read_bytes()
            added = ca.post(f"/v1/products/{pid}/images", files={"images": (photo.name, data, "image/jpeg")})
            assert added.status_code == 201, added.text
            acknowledged = time.perf_counter()
            for attempt in range(1, 1000):
                found = cb.post(
                    "/v1/search", params={"k": 1, "category": pid}, content=data, headers={"Content-Type": "image/jpeg"}
                )
                if found.status_code == 200 and [m["product_id"] for m in found.json()["matches"]] == [pid]:
                    break
            waits.append((time.perf_counter() - acknowledged) * 1e3)
            tries.append(attempt)
    return {
        "products": products,
        "hit_on_first_try": sum(t == 1 for t in tries) / len(tries),
        "tries_max": max(tries),
        "ms_to_first_hit_p50": round(statistics.median(waits), 2),
        "ms_to_first_hit_max": round(max(waits), 2),
    }


def background_follow(a: str, b: str, products: int) -> dict:
    """Create products through A; after each 201, poll B's /readyz until its index holds one more photo."""
    waits = []
    with httpx.Client(base_url=a, timeout=30) as ca, httpx.Client(base_url=b, timeout=30) as cb:
        for i in range(products):
            held = cb.get("/readyz").json()["vectors"]
            pid, photo = f"follow-{i}", CATALOG_PHOTOS[-1 - i]
            body = {"product_id": pid, "name": pid, "fine_category": pid, "coarse_category": "bench"}
            assert ca.post("/v1/products", json=body).status_code == 201
            files = {"images": (photo.name, photo.read_bytes(), "image/jpeg")}
            assert ca.post(f"/v1/products/{pid}/images", files=files).status_code == 201
            acknowledged = time.perf_counter()
            while cb.get("/readyz").json()["vectors"] <= held:
                time.sleep(0.005)
            waits.append((time.perf_counter() - acknowledged) * 1e3)
    return {
        "products": products,
        "follow_interval_s": 0.5,
        "ms_to_index_p50": round(statistics.median(waits), 1),
        "ms_to_index_max": round(max(waits), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--products", type=int, default=30)
    args = parser.parse_args()
    services, procs = Servers(), []
    try:
        common = {"SEESKU_ONNX_THREADS": "0"}
        pg_faiss = {**common, "SEESKU_DATABASE_URL": services.database()}
        pg_milvus = {**common, "SEESKU_DATABASE_URL": services.database(), "SEESKU_INDEX": services.milvus_url}
        urls = {}
        for name, env in (("embedded", common), ("postgres_faiss", pg_faiss), ("postgres_milvus", pg_milvus)):
            urls[name], proc = start_server(env)
            procs.append(proc)
        latency = search_latency(urls, args.rounds, args.per_round)
        visibility = {}
        for name, env in (("postgres_milvus", pg_milvus), ("postgres_faiss", pg_faiss)):
            other, proc = start_server({**env, "SEESKU_LOAD_SAMPLES": "false"})  # replica B, same servers
            procs.append(proc)
            visibility[name] = upload_to_hit(urls[name], other, name, args.products)
            if name == "postgres_faiss":
                follow = background_follow(urls[name], other, args.products)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        services.close()
    emit(
        {
            "bench": "replicas",
            "catalogue": "samples/catalog.csv",
            "search_c1": latency,
            "postgres_milvus_p50_over_embedded": latency["postgres_milvus"]["p50_over_embedded"],
            "upload_on_a_to_hit_on_b": visibility,
            "background_follow_postgres_faiss": follow,
        }
    )


if __name__ == "__main__":
    main()
