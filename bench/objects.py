"""What finding each product costs: POST /v1/search?objects=true against the whole-photo search, one server.

    python bench/objects.py              # starts `seesku serve` with the samples, `--servers` times (3)

Photos: basket photos of 3 sample-catalogue products (1024 px long side, JPEG q90, composed as
`seesku eval objects` composes them). Each round sends every photo once as a plain search and once with
objects=true, alternating, on one keep-alive connection (concurrency 1), so both see the same machine. The
issue's target: objects=true at most 2x the whole-photo search's p50. Reported per server: both p50s, their
ratio and the service's own timings (decode, detect, embed, search); overall: the median ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from urllib.parse import urlsplit

from common import ROOT, emit, percentile
from search_e2e import start_server

from training.detection.composites import catalogue_scene, jpeg


def photos(count: int, products: int) -> list[bytes]:
    return [
        jpeg(catalogue_scene(ROOT / "samples" / "catalog.csv", products, seed)[0].image, 90) for seed in range(count)
    ]


def rounds(url: str, data: list[bytes], repeats: int) -> dict:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    times: dict[str, list[float]] = {"whole_photo": [], "objects": []}
    server: dict[str, dict[str, list[float]]] = {"whole_photo": {}, "objects": {}}
    objects_found = []
    try:
        for r in range(repeats + 1):  # the first round warms both paths up and is not counted
            for photo in data:
                for kind, path in (("whole_photo", "/v1/search"), ("objects", "/v1/search?objects=true")):
                    started = time.perf_counter()
                    conn.request("POST", path, body=photo, headers={"Content-Type": "image/jpeg"})
                    resp = conn.getresponse()
                    body = json.loads(resp.read())
                    ms = (time.perf_counter() - started) * 1e3
                    if resp.status != 200:
                        raise SystemExit(f"{path}: HTTP {resp.status} {body}")
                    if r == 0:
                        continue
                    times[kind].append(ms)
                    for name, value in body["timings_ms"].items():
                        if value is not None:
                            server[kind].setdefault(name, []).append(value)
                    if kind == "objects":
                        objects_found.append(len(body["objects"]))
    finally:
        conn.close()
    p50 = {kind: percentile(values, 50) for kind, values in times.items()}
    return {
        "p50_ms": {kind: round(v, 2) for kind, v in p50.items()},
        "p95_ms": {kind: round(percentile(values, 95), 2) for kind, values in times.items()},
        "ratio": round(p50["objects"] / p50["whole_photo"], 3),
        "server_ms": {
            kind: {name: round(statistics.median(v), 2) for name, v in names.items()} for kind, names in server.items()
        },
        "objects_per_photo_median": statistics.median(objects_found),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--products", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = photos(args.photos, args.products)
    runs = []
    for _ in range(args.servers):
        url, proc = start_server()
        try:
            runs.append(rounds(url, data, args.repeats))
        finally:
            proc.terminate()
            proc.wait()
    ratios = [r["ratio"] for r in runs]
    emit(
        {
            "bench": "objects",
            "photos": len(data),
            "products_per_photo": args.products,
            "requests_per_kind_per_server": args.photos * args.repeats,
            "ratio_median": statistics.median(ratios),
            "ratios": ratios,
            "target_ratio": 2.0,
            "servers": runs,
        }
    )


if __name__ == "__main__":
    main()
