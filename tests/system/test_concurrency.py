"""Searches while merchandisers add and delete products, against the real server: no errors, and no search
that started after a delete was acknowledged names the deleted product."""

import threading
import time

import httpx
import pytest

from tests.conftest import SAMPLES

pytestmark = pytest.mark.slow
PHOTOS = sorted((SAMPLES / "catalog").glob("*_*.jpg"))[:12]


def test_searches_never_name_a_product_after_its_delete(live_server):
    base, _ = live_server
    deleted_at: dict[str, float] = {}
    searches: list[tuple[float, list[str]]] = []
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def merchandiser(worker: int):
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in range(15):
                pid = f"churn-{worker}-{i}"
                photo = PHOTOS[(worker * 15 + i) % len(PHOTOS)]
                steps = [
                    client.post(
                        "/v1/products",
                        json={"product_id": pid, "name": pid, "fine_category": "Churn", "coarse_category": "Churn"},
                    ),
                    client.post(
                        f"/v1/products/{pid}/images", files={"images": (photo.name, photo.read_bytes(), "image/jpeg")}
                    ),
                ]
                deleted = client.delete(f"/v1/products/{pid}")
                acknowledged = time.monotonic()
                steps.append(deleted)
                with lock:
                    deleted_at[pid] = acknowledged
                    errors.extend(
                        f"{r.request.method} {r.request.url.path}: {r.status_code}"
                        for r in steps
                        if r.status_code >= 300
                    )

    def shopper(worker: int):
        with httpx.Client(base_url=base, timeout=30) as client:
            i = worker
            while not stop.is_set():
                started = time.monotonic()
                resp = client.post(
                    "/v1/search",
                    params={"k": 20, "category": "Churn"} if i % 2 else {"k": 20},
                    content=PHOTOS[i % len(PHOTOS)].read_bytes(),
                    headers={"Content-Type": "image/jpeg"},
                )
                i += 1
                if resp.status_code == 422 and resp.json()["error"]["code"] == "unknown_category":
                    continue  # no Churn product exists at this instant: a correct answer
                with lock:
                    if resp.status_code != 200:
                        errors.append(f"search: {resp.status_code} {resp.text[:200]}")
                    else:
                        searches.append((started, [m["product_id"] for m in resp.json()["matches"]]))

    writers = [threading.Thread(target=merchandiser, args=(w,)) for w in range(2)]
    readers = [threading.Thread(target=shopper, args=(w,)) for w in range(4)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()

    assert not errors, errors[:5]
    assert len(deleted_at) == 30 and len(searches) > 50
    stale = [
        (pid, started) for started, ids in searches for pid in ids if pid in deleted_at and started > deleted_at[pid]
    ]
    assert not stale, f"{len(stale)} searches named a product deleted before they started: {stale[:3]}"
    assert any(pid.startswith("churn-") for _, ids in searches for pid in ids)  # the churn was visible to searches
