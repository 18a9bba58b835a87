"""Shoppers' search latency while a merchandiser's tagging job runs on the same server, per
SEESKU_TAGGING_WORKERS setting, in one run.

    python bench/search_during_tagging.py [--photos 1000] [--workers 0,1]

For each setting: a fresh `seesku serve` with the sample catalogue; one shopper searching back to back (the
sample query photos) with no job running, then while a zip job of `--photos` generated photos (the folder of
bench/tagging.py) runs to completion. Reports search p50/p95 idle and during the job, and the job's photos/s.
"""

from __future__ import annotations

import argparse
import http.client
import io
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from common import QUERY_PHOTOS, emit, percentile
from search_e2e import start_server
from tagging import generate


def searches(url: str, photos: list[bytes], until) -> list[float]:
    """Latencies (ms) of back-to-back searches on one keep-alive connection until `until(searches done)`."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    latencies = []
    try:
        while not until(len(latencies)):
            t = time.perf_counter()
            conn.request(
                "POST", "/v1/search", body=photos[len(latencies) % len(photos)], headers={"Content-Type": "image/jpeg"}
            )
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"search answered {response.status}")
            latencies.append((time.perf_counter() - t) * 1e3)
    finally:
        conn.close()
    return latencies


def summary(latencies: list[float]) -> dict:
    return {
        "searches": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
    }


def measure(workers: int, job_zip: bytes, photos: list[bytes], count: int) -> dict:
    url, proc = start_server({"SEESKU_TAGGING_WORKERS": str(workers)})
    try:
        searches(url, photos, lambda done: done >= 20)  # warm-up
        idle_until = time.perf_counter() + 10
        idle = searches(url, photos, lambda _: time.perf_counter() > idle_until)
        with httpx.Client(base_url=url, timeout=120) as client:
            started = time.perf_counter()
            job = client.post("/v1/tagging/jobs", content=job_zip, headers={"Content-Type": "application/zip"}).json()
            state = {"job": job}

            def poll():
                while state["job"]["state"] not in ("done", "failed", "cancelled"):
                    time.sleep(0.2)
                    state["job"] = client.get(f"/v1/tagging/jobs/{job['id']}").json()
                state["seconds"] = time.perf_counter() - started

            poller = threading.Thread(target=poll)
            poller.start()
            during = searches(url, photos, lambda _: not poller.is_alive())
            poller.join()
        if state["job"]["state"] != "done" or state["job"]["done"] != count:
            raise SystemExit(f"the job ended {state['job']}")
        return {
            "tagging_workers": workers,
            "search_idle": summary(idle),
            "search_during_job": summary(during),
            "job_photos_per_s": round(count / state["seconds"], 1),
            "job_seconds": round(state["seconds"], 1),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--workers", default="0,1", help="SEESKU_TAGGING_WORKERS values, comma-separated")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "seesku-bench-tagging")
    args = parser.parse_args()
    folder = args.folder / f"photos-{args.photos}"
    if not folder.exists():
        generate(folder, args.photos)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*.jpg")):
            archive.write(path, path.relative_to(folder).as_posix())
    photos = [p.read_bytes() for p in QUERY_PHOTOS]
    results = [measure(int(w), buf.getvalue(), photos, args.photos) for w in args.workers.split(",")]
    emit({"bench": "search_during_tagging", "photos": args.photos, "results": results})


if __name__ == "__main__":
    main()
