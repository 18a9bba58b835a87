"""A model switch under load: shoppers search a real server without pause while the product embedder is
switched (int8 to fp32, the sample catalogue re-embedded for it), against the same load before it.

    python bench/model_switch.py [--clients 8] [--idle-seconds 20] [--to triton_models/product_embedder]

Reports failed requests (any non-200) over the switch, search p50/p99 idle and while the new version is
being prepared (from the request until the replica serves it), the switch's duration, and which versions
answered. The target: 0 failed, p99 during the re-embedding at most 2x idle.
"""

from __future__ import annotations

import argparse
import threading
import time

import httpx
from common import QUERY_PHOTOS, ROOT, emit, percentile
from search_e2e import start_server


class Shoppers:
    """`clients` shoppers searching back to back; each answer's (start, latency ms, status, model id)."""

    def __init__(self, url: str, clients: int):
        self.url, self.photos = url, [p.read_bytes() for p in QUERY_PHOTOS]
        self.answers: list[tuple[float, float, int, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._shop, args=(n,)) for n in range(clients)]

    def _shop(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            i = n
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    resp = client.post("/v1/search", content=self.photos[i % len(self.photos)],
                                       headers={"Content-Type": "image/jpeg"})  # fmt: skip
                    code, model = resp.status_code, resp.json().get("model", {}).get("id")
                except httpx.HTTPError:
                    code, model = 0, None
                self.answers.append((started, (time.perf_counter() - started) * 1e3, code, model))
                i += 1

    def between(self, t0: float, t1: float) -> list[tuple]:
        return [a for a in self.answers if t0 <= a[0] < t1]


def figures(answers: list[tuple]) -> dict:
    ms = [a[1] for a in answers]
    return {"searches": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=20)
    parser.add_argument("--to", default=str(ROOT / "triton_models" / "product_embedder"))
    args = parser.parse_args()
    url, proc = start_server()
    shoppers = Shoppers(url, args.clients)
    try:
        with httpx.Client(base_url=url, timeout=60) as admin:
            before = admin.get("/v1/models").json()["vision"]["serving"]
            for t in shoppers.threads:
                t.start()
            time.sleep(3)  # warm-up, not counted
            idle_from = time.perf_counter()
            time.sleep(args.idle_seconds)
            asked = time.perf_counter()
            admin.put("/v1/models/vision", json={"model_dir": args.to}).raise_for_status()
            while (state := admin.get("/v1/models").json()["vision"])["model_dir"] != args.to or state[
                "state"
            ] != "serving":
                if state["state"] == "failed":
                    raise SystemExit(f"the switch failed: {state['error']}")
                time.sleep(0.05)
            switched = time.perf_counter()
            time.sleep(5)
            shoppers.stop.set()
            for t in shoppers.threads:
                t.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    idle, during = shoppers.between(idle_from, asked), shoppers.between(asked, switched)
    everything = shoppers.between(idle_from, float("inf"))
    failed = sum(a[2] != 200 for a in everything)
    ratio = figures(during)["p99_ms"] / figures(idle)["p99_ms"]
    emit(
        {
            "benchmark": "model_switch",
            "clients": args.clients,
            "from": before,
            "to": state["serving"],
            "photos_embedded": state["progress"][1],
            "switch_s": round(switched - asked, 2),
            "idle": figures(idle),
            "during_switch": figures(during),
            "p99_during_over_idle": round(ratio, 3),
            "requests": len(everything),
            "failed": failed,
            "versions_answering": sorted({a[3] for a in everything if a[3]}),
            "target": "0 failed, p99 during the re-embedding <= 2x idle",
            "met": failed == 0 and ratio <= 2.0,
        }
    )


if __name__ == "__main__":
    main()
