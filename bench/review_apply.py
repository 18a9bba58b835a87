"""A merchandiser's review applied: a 500-photo tagging job decided and applied the way the review page does
it (every photo decided in one request, then the apply in steps of 10 products, each step's progress shown).

    python bench/review_apply.py [--photos 500] [--data ../shared/data/grocery_store]

A fresh `seesku serve` with the sample catalogue; the photos are the Grocery Store's *train* split (real
shopper photos; never the test split), every k-th one so every product is in it. Decisions: a photo judged
`matched` goes to its top match; the others, and every photo of one fine category in four (the served model
was fit on these photos, so nearly all are matched), become new products, one per fine category (several
photos each), as a merchandiser files items the catalogue lacks. Reports the apply's wall time from
the first step to the last (the issue's target: under 30 s for 500 photos), its steps, and what it changed.
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from pathlib import Path

import httpx
from common import ROOT, emit
from search_e2e import start_server

TARGET_S = 30.0


def photos_zip(data: Path, n: int) -> bytes:
    photos = sorted((data / "dataset" / "train").rglob("*.jpg"))
    step = max(1, len(photos) // n)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, path in enumerate(photos[::step][:n]):
            z.writestr(f"delivery/{i:04d}-{path.name}", path.read_bytes())
    return buf.getvalue()


def run_job(client: httpx.Client, body: bytes) -> str:
    job = client.post("/v1/tagging/jobs", content=body, headers={"Content-Type": "application/zip"}).json()
    while job["state"] in ("queued", "running"):
        time.sleep(0.5)
        job = client.get(f"/v1/tagging/jobs/{job['id']}").json()
    if job["state"] != "done":
        raise SystemExit(f"the tagging job ended {job['state']}: {job['error']}")
    return job["id"]


def decisions(rows: list[dict]) -> list[dict]:
    out = []
    fines = sorted({row["fine"] for row in rows})
    new_categories = set(fines[::4])
    for row in rows:
        if row["matched"] and row["fine"] not in new_categories:
            out.append({"key": row["path"], "action": "add_photo", "product_id": row["matches"][0]["product_id"]})
        else:
            new = f"New-{row['fine']}"
            product = {"product_id": new, "name": new.replace("-", " "), "fine_category": row["fine"],
                       "coarse_category": row["coarse"]}  # fmt: skip
            out.append({"key": row["path"], "action": "new_product", "product": product})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery_store")
    args = parser.parse_args()
    url, proc = start_server()
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            job_id = run_job(client, photos_zip(args.data, args.photos))
            page = client.get(f"/v1/tagging/jobs/{job_id}/review", params={"limit": 500}).json()
            rows = page["rows"]
            while len(rows) < page["total"]:
                more = {"limit": 500, "offset": len(rows)}
                rows += client.get(f"/v1/tagging/jobs/{job_id}/review", params=more).json()["rows"]
            chosen = decisions([r for r in rows if r["status"] == "ok"])
            t0 = time.perf_counter()
            client.post(f"/v1/tagging/jobs/{job_id}/decisions", json={"decisions": chosen}).raise_for_status()
            decided_s = time.perf_counter() - t0
            steps, applied, failed, added = [], 0, 0, 0
            started = time.perf_counter()
            remaining = None
            while remaining != 0:
                t = time.perf_counter()
                report = client.post(f"/v1/tagging/jobs/{job_id}/apply", params={"max_products": 10}).json()
                steps.append(round(time.perf_counter() - t, 3))
                applied += len(report["applied"])
                failed += len(report["failed"])
                added += sum(p["added"] for p in report["applied"])
                remaining = report["remaining"]
            apply_s = time.perf_counter() - started
            again = client.post(f"/v1/tagging/jobs/{job_id}/apply").json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    emit(
        {
            "benchmark": "review_apply",
            "photos": len(rows),
            "decisions": len(chosen),
            "to_existing_products": sum(d["action"] == "add_photo" for d in chosen),
            "to_new_products": sum(d["action"] == "new_product" for d in chosen),
            "decisions_request_s": round(decided_s, 3),
            "apply_s": round(apply_s, 2),
            "apply_steps": len(steps),
            "apply_step_s_max": max(steps),
            "products_changed": applied,
            "products_failed": failed,
            "photos_added": added,
            "second_apply_changed": len(again["applied"]) + len(again["failed"]),
            "target_s": TARGET_S,
            "met": apply_s < TARGET_S and failed == 0,
        }
    )


if __name__ == "__main__":
    main()
