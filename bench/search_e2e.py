"""Latency of POST /v1/search against a running server, next to decode+embed alone, in one run.

    python bench/search_e2e.py                 # starts `seesku serve` on a free port with the samples
    python bench/search_e2e.py --url URL       # or measures a server you started

Starts the server `--servers` times (5) and reports the one with the median ratio, with every server's
ratios. Prints p50/p95/p99 at concurrency 1 and 8 with the service's own timings of each request (`server_ms`), and
the ratio of the service's p50 to the median time of the model's own work (decode + embed, in-process) on the
same photos, measured two ways: back to back in a loop (`decode_embed_ms_median`, the model at its fastest:
the headline ratio) and once per request, alternating with the requests (`..._one_per_request`).

The load generator is the standard library's `http.client` on one keep-alive connection per worker, the
lightest Python client: on two cores it shares the CPUs with the server, so its own cost lands in every
latency. `client_overhead` times it and httpx on `GET /healthz` (no model work): the HTTP round-trip floor
(measured 0.72 ms; httpx 0.04 ms more).

`runtimes` compares the in-process runtimes end to end: one server per runtime (ONNX Runtime fp32, the
baseline; OpenVINO fp32; OpenVINO on the int8 graph of `seesku quantize`), started together and measured in
interleaved rounds at concurrency 1, fresh servers `--servers` times; each runtime's p50 over the baseline's
is the median over those starts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

import httpx
from common import MODEL_DIR, QUERY_PHOTOS, ROOT, RUNTIMES, emit, median_ms, percentile

from vision.preprocess import load_image
from vision.runtimes.onnx import OnnxRuntimeEmbedder


def runtime_env(name: str) -> dict[str, str]:
    """The environment that picks the runtime `name` of RUNTIMES."""
    return {f"SEESKU_{key.upper()}": str(value) for key, value in RUNTIMES[name].items()}


def start_server(settings: dict[str, str] | None = None) -> tuple[str, subprocess.Popen]:
    """`seesku serve` with the sample catalogue on a free port and a fresh data dir; `settings`: more env."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SEESKU_DATA_DIR": tempfile.mkdtemp(prefix="seesku-bench-"), **(settings or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def load(url: str, photos: list[bytes], concurrency: int, requests: int) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(requests))
    parts = urlsplit(url)

    server: dict[str, list[float]] = {}

    def worker():
        nonlocal errors
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            for i in counter:
                data = photos[i % len(photos)]
                t = time.perf_counter()
                conn.request("POST", "/v1/search", body=data, headers={"Content-Type": "image/jpeg"})
                resp = conn.getresponse()
                body = resp.read()
                ms = (time.perf_counter() - t) * 1e3
                with lock:
                    latencies.append(ms)
                    errors += resp.status != 200
                    if resp.status == 200:
                        for name, value in json.loads(body)["timings_ms"].items():
                            server.setdefault(name, []).append(value)
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        # the service's own timings of each request (decode, embed, search = ranking, total), medians
        "server_ms": {name: round(statistics.median(values), 2) for name, values in server.items()},
    }


def client_overhead(url: str, repeats: int = 300) -> dict:
    """Median round trip of GET /healthz (no model work) with each client: the HTTP floor, and what httpx adds."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    def stdlib():
        conn.request("GET", "/healthz")
        conn.getresponse().read()

    with httpx.Client(base_url=url, timeout=30) as client:
        result = {
            "healthz_p50_ms_http_client": round(median_ms(stdlib, repeats, warmup=20), 3),
            "healthz_p50_ms_httpx": round(median_ms(lambda: client.get("/healthz"), repeats, warmup=20), 3),
        }
    conn.close()
    return result


def measure_server(url: str, photos: list[bytes], decode_embed, requests: int) -> dict:
    """One server process: interleaved rounds of the service and the model alone, then c1 and c8 loads."""
    load(url, photos, 1, 20)  # warm-up
    # Interleave short rounds of the two, so machine noise hits both alike.
    rounds = 10
    per_round = max(1, requests // rounds)
    service, model, alternating = [], [], []
    parts = urlsplit(url)
    keep_alive = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    for _ in range(rounds):
        service.append(load(url, photos, 1, per_round)["p50_ms"])
        model.append(median_ms(decode_embed, repeats=per_round, warmup=1))
        # The model once per request, as the service runs it: caches and ORT's threads are as cold as
        # between two requests.
        for i in range(per_round):
            keep_alive.request(
                "POST", "/v1/search", body=photos[i % len(photos)], headers={"Content-Type": "image/jpeg"}
            )
            keep_alive.getresponse().read()
            alternating.append(median_ms(decode_embed, repeats=1, warmup=0))
    keep_alive.close()
    service_p50, model_ms, one_at_a_time = (
        statistics.median(service),
        statistics.median(model),
        statistics.median(alternating),
    )
    return {
        "concurrency_1": load(url, photos, 1, requests),
        "concurrency_8": load(url, photos, 8, requests),
        "interleaved_rounds": rounds,
        "search_p50_c1_ms": round(service_p50, 2),
        "decode_embed_ms_median": round(model_ms, 2),
        "p50_c1_over_decode_embed": round(service_p50 / model_ms, 2),
        "decode_embed_ms_one_per_request": round(one_at_a_time, 2),
        "p50_c1_over_decode_embed_one_per_request": round(service_p50 / one_at_a_time, 2),
    }


def compare_runtimes(names: list[str], photos: list[bytes], requests: int, starts: int, rounds: int = 10) -> dict:
    """p50 at concurrency 1 of one server per runtime, interleaved rounds; `starts` sets of fresh servers."""
    per_round = max(1, requests // rounds)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    p50s: dict[str, list[float]] = {name: [] for name in names}
    server_ms: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for _ in range(starts):
        servers = {}
        try:
            for name in names:  # the others sit idle while one is measured
                servers[name] = start_server(runtime_env(name))
            for url, _ in servers.values():
                load(url, photos, 1, 20)  # warm-up
            run_p50s: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(rounds):
                for name, (url, _) in servers.items():
                    r = load(url, photos, 1, per_round)
                    run_p50s[name].append(r["p50_ms"])
                    for part, ms in r["server_ms"].items():
                        server_ms[name].setdefault(part, []).append(ms)
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait()
        base = statistics.median(run_p50s[names[0]])
        for name in names:
            p50s[name].append(statistics.median(run_p50s[name]))
            ratios[name].append(round(p50s[name][-1] / base, 3))
    return {
        "baseline": names[0],
        "starts": starts,
        **{
            name: {
                "p50_c1_ms": round(statistics.median(p50s[name]), 2),
                "p50_over_baseline": round(statistics.median(ratios[name]), 3),
                "p50_over_baseline_each_start": ratios[name],
                "server_ms": {part: round(statistics.median(v), 2) for part, v in server_ms[name].items()},
            }
            for name in names
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--servers",
        type=int,
        default=5,
        help="server processes started one after another (the headline is their median): on "
        "this shared 2-core machine one process can sit at 1.24x and the next at 1.42x",
    )
    parser.add_argument(
        "--runtimes",
        default=",".join(RUNTIMES),
        help=f"runtimes compared end to end, the first is the baseline; '' for none (of {', '.join(RUNTIMES)})",
    )
    parser.add_argument("--skip-overhead", action="store_true", help="only the runtime comparison")
    args = parser.parse_args()
    photos = [p.read_bytes() for p in QUERY_PHOTOS]

    # The model's own work on the same photos, in this process, while the server is idle; the server runs
    # the same runtime and model.
    embedder = OnnxRuntimeEmbedder(MODEL_DIR)
    spec = embedder.manifest.input.spec()
    cycle = iter(range(10**9))

    def decode_embed():
        embedder.embed(load_image(photos[next(cycle) % len(photos)], spec)[None])

    runs, floor = [], None
    for _ in range(0 if args.skip_overhead else 1 if args.url else args.servers):
        url, proc = (args.url, None) if args.url else start_server(runtime_env("onnxruntime_fp32"))
        try:
            runs.append(measure_server(url, photos, decode_embed, args.requests))
            floor = floor or client_overhead(url)
        finally:
            if proc:
                proc.terminate()
                proc.wait()

    names = [n for n in args.runtimes.split(",") if n] if not args.url else []
    runtimes = compare_runtimes(names, photos, args.requests, args.servers) if names else None
    if not runs:
        emit({"bench": "search_e2e", "runtimes": runtimes})
        return
    # The server with the median ratio stands for the run; every server's figures follow.
    headline = sorted(runs, key=lambda r: r["p50_c1_over_decode_embed"])[len(runs) // 2]
    emit(
        {
            "bench": "search_e2e",
            **headline,
            "servers": len(runs),
            "p50_c1_over_decode_embed_each_server": [r["p50_c1_over_decode_embed"] for r in runs],
            "p50_c1_over_decode_embed_one_per_request_each_server": [
                r["p50_c1_over_decode_embed_one_per_request"] for r in runs
            ],
            "client_overhead": floor,
            "runtimes": runtimes,
        }
    )


if __name__ == "__main__":
    main()
