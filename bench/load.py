"""Load: concurrent shoppers on /v1/search for a fixed time against a real server, and its memory.

    python bench/load.py [--clients 16] [--seconds 60] [--min-searches 5000] [--warmup 1000]

Counts errors (any non-200), reports p50/p99, and the server's resident memory once 1,000 searches at full
concurrency have warmed it up (thread pool, allocator arenas) and again at the end, at least
--min-searches later: growth must stay under 5 %.
"""

from __future__ import annotations

import argparse
import threading
import time

import httpx
from common import QUERY_PHOTOS, emit, percentile
from search_e2e import start_server


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--min-searches", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=1000, help="searches before the first memory sample")
    args = parser.parse_args()
    photos = [p.read_bytes() for p in QUERY_PHOTOS]
    url, proc = start_server()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    try:

        def shopper(n: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                i = n
                while not stop.is_set():
                    t = time.perf_counter()
                    try:
                        code = client.post(
                            "/v1/search",
                            content=photos[i % len(photos)],
                            headers={"Content-Type": "image/jpeg", "X-Channel": "app"},
                        ).status_code
                    except httpx.HTTPError:
                        code = -1
                    ms = (time.perf_counter() - t) * 1e3
                    with lock:
                        latencies.append(ms)
                        statuses[code] = statuses.get(code, 0) + 1
                    i += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=shopper, args=(n,)) for n in range(args.clients)]
        for t in threads:
            t.start()
        while len(latencies) < args.warmup:
            time.sleep(0.1)
        rss_start, mark = rss_mb(proc.pid), len(latencies)
        while time.perf_counter() - started < args.seconds or len(latencies) - mark < args.min_searches:
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        rss_end = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    errors = sum(n for code, n in statuses.items() if code != 200)
    emit(
        {
            "bench": "load",
            "clients": args.clients,
            "seconds": round(wall, 1),
            "requests": len(latencies),
            "errors": errors,
            "statuses": {str(k): v for k, v in statuses.items()},
            "rps": round(len(latencies) / wall, 1),
            "p50_ms": round(percentile(latencies, 50), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
            "p99_over_p50": round(percentile(latencies, 99) / percentile(latencies, 50), 2),
            "searches_between_rss_samples": len(latencies) - mark,
            "rss_mb_after_warmup": round(rss_start, 1),
            "rss_mb_at_end": round(rss_end, 1),
            "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
        }
    )


if __name__ == "__main__":
    main()
