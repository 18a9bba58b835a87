"""The web pages in a real browser: headless Chromium (Debian `chromium`) driven by Playwright, against
the real server. Set SEESKU_SCREENSHOT_DIR to keep screenshots of both pages (docs/screenshots/ has them)."""

import csv
import io
import os
import zipfile
from pathlib import Path

import pytest

from tests.conftest import SAMPLES
from tests.system.conftest import screenshot

pytestmark = pytest.mark.slow


def test_camera_search_page_finds_the_product(live_server, browser):
    base, _ = live_server
    page = browser.new_page(viewport={"width": 412, "height": 915}, is_mobile=True)  # a phone
    page.goto(base + "/")
    photo_input = page.locator("input#photo")
    assert photo_input.get_attribute("capture") == "environment" and photo_input.get_attribute("accept") == "image/*"
    assert page.get_by_label("Take or choose a photo").count() == 1  # labelled for screen readers
    query = SAMPLES / "queries" / "Garant-Ecological-Standard-Milk_004.jpg"
    expected = "Garant-Ecological-Standard-Milk"
    photo_input.set_input_files(str(query))
    page.locator("ol#matches li").first.wait_for(timeout=30_000)
    ids = page.locator("ol#matches li").evaluate_all("items => items.map(li => li.dataset.productId)")
    assert expected in ids[:5]
    assert page.locator("#status").inner_text().startswith("5 matching products")
    assert page.locator("ol#matches li img").first.get_attribute("alt").startswith("Catalogue photo of")
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    screenshot(page, "search.png")
    page.close()


def test_camera_search_page_says_when_nothing_matches(live_server, browser, tmp_path):
    from training.open_set import non_product_photos

    base, _ = live_server
    stripes = tmp_path / "stripes.jpg"
    stripes.write_bytes(non_product_photos(1, seed=11)[0][1])  # blue-and-yellow-stripes of no product
    page = browser.new_page(viewport={"width": 412, "height": 915}, is_mobile=True)
    page.goto(base + "/")
    page.locator("input#photo").set_input_files(str(stripes))
    page.locator("ol#matches li").first.wait_for(timeout=30_000)
    assert page.locator("#results-title").inner_text() == "No exact match — similar products"
    assert page.locator("#status").inner_text().startswith("No exact match — 5 similar products")
    page.close()


def test_merchandiser_page_runs_a_job_and_downloads_results(live_server, browser, tmp_path):
    base, _ = live_server
    photos = sorted((SAMPLES / "catalog").glob("*_*.jpg"))[:6]
    archive = tmp_path / "shelf.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in photos:
            z.write(p, f"shelf/{p.name}")
        z.write(photos[0], "shelf/duplicate-of-first.jpg")
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page.goto(base + "/merchandiser")
    page.get_by_label("Choose a zip of photos").set_input_files(str(archive))
    page.get_by_role("button", name="Start tagging").click()
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('done')", timeout=120_000)
    assert "7 of 7 photos tagged" in page.locator("#status").inner_text()
    # "done" shows before the page has fetched the duplicate groups: wait for them to be drawn
    group = page.get_by_role("group", name="Duplicate group 1: 2 photos")
    group.locator("img").nth(1).wait_for(timeout=30_000)
    assert group.locator("img").count() == 2
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    screenshot(page, "merchandiser.png")
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == 7 and {r["status"] for r in rows} == {"ok"}
    assert rows[0]["fine"] and rows[0]["matches"]  # the sample catalogue gives catalogue matches
    page.close()


def test_pages_ask_for_an_api_key_where_the_server_requires_one(browser, tmp_path):
    """Off loopback keys are required: the page shows a key field on 401, keeps the key for the tab and
    sends it with every call, thumbnails included."""
    import subprocess
    import sys

    from api.settings import REPO_ROOT
    from tests.conftest import start_serve

    env = {"SEESKU_DATA_DIR": str(tmp_path), "SEESKU_REQUIRE_KEYS": "true", "SEESKU_ONNX_THREADS": "2"}

    def create_key(*scopes):
        command = [sys.executable, "-m", "api.cli", "keys", "create", "--name", "web page"]
        for scope in scopes:
            command += ["--scope", scope]
        return subprocess.run(
            command, cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=True
        ).stdout.strip()

    token, merchandiser_token = create_key("search"), create_key("catalog:write")
    base, proc = start_serve(env)
    try:
        page = browser.new_page()
        page.goto(base + "/")
        assert page.locator("#key-form").is_hidden()
        photo = SAMPLES / "queries" / "Garant-Ecological-Standard-Milk_004.jpg"
        page.locator("input#photo").set_input_files(str(photo))
        page.locator("#key-form").wait_for(state="visible", timeout=30_000)
        assert "needs an API key" in page.locator("#error").inner_text()
        page.get_by_label("API key").fill(token)
        page.get_by_role("button", name="Use key").click()  # the refused search is sent again, with the key
        assert page.locator("#key-form").is_hidden()
        page.locator("ol#matches li").first.wait_for(timeout=30_000)
        assert page.locator("#error").inner_text() == ""
        ids = page.locator("ol#matches li").evaluate_all("items => items.map(li => li.dataset.productId)")
        assert "Garant-Ecological-Standard-Milk" in ids
        # The thumbnails came through the key too (a plain <img src> would have got 401).
        page.wait_for_function(
            "() => [...document.querySelectorAll('#matches img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        page.reload()  # the key stays for the tab, not beyond it
        assert page.evaluate("() => sessionStorage.getItem('seesku-api-key')") == token
        page.close()

        # The merchandiser page: job, duplicate thumbnails and the CSV download all carry the key.
        archive = tmp_path / "shelf.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.write(photo, "a.jpg")
            z.write(photo, "copy-of-a.jpg")
        page = browser.new_page(accept_downloads=True)
        page.goto(base + "/merchandiser")
        page.get_by_label("Choose a zip of photos").set_input_files(str(archive))
        page.get_by_role("button", name="Start tagging").click()
        page.locator("#key-form").wait_for(state="visible", timeout=30_000)
        page.get_by_label("API key").fill(merchandiser_token)
        page.get_by_role("button", name="Use key").click()
        page.get_by_role("button", name="Start tagging").click()
        page.wait_for_function(
            "() => document.querySelector('#status').textContent.startsWith('done')", timeout=120_000
        )
        group = page.get_by_role("group", name="Duplicate group 1: 2 photos")
        group.locator("img").nth(1).wait_for(timeout=30_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#groups img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        with page.expect_download() as download:
            page.get_by_role("link", name="CSV").click()
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        assert sorted(r["path"] for r in rows) == ["a.jpg", "copy-of-a.jpg"]
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_camera_search_page_boxes_each_product_and_shows_a_tapped_ones_matches(live_server, browser, tmp_path):
    from tests.images import encode, sample_scene

    base, _ = live_server
    scene, products = sample_scene(count=3, seed=6)
    basket = tmp_path / "basket.jpg"
    basket.write_bytes(encode(scene.image, "JPEG", quality=90))
    page = browser.new_page(viewport={"width": 412, "height": 915}, is_mobile=True)
    page.goto(base + "/")
    page.locator("input#photo").set_input_files(str(basket))
    page.locator("ol#matches li").first.wait_for(timeout=30_000)
    boxes = page.locator("#photo-boxes .box")
    assert boxes.count() == 3
    assert page.locator("#objects-hint").inner_text().startswith("3 products found in the photo")
    # Each box sits where its product is on the photo: its centre over the true box, in screen pixels.
    photo = page.locator("#preview").bounding_box()
    tapped = set()
    for i in range(3):
        box = boxes.nth(i).bounding_box()
        cx = (box["x"] + box["width"] / 2 - photo["x"]) / photo["width"]
        cy = (box["y"] + box["height"] / 2 - photo["y"]) / photo["height"]
        inside = [j for j, (x0, y0, x1, y1) in enumerate(scene.boxes) if x0 < cx < x1 and y0 < cy < y1]
        assert len(inside) == 1
        boxes.nth(i).click()
        assert boxes.nth(i).get_attribute("aria-pressed") == "true"
        assert page.locator("#results-title").inner_text().endswith(f"for product {i + 1}")
        first = page.locator("ol#matches li").first.get_attribute("data-product-id")
        assert first == products[inside[0]]
        tapped.add(first)
    assert tapped == set(products)
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    screenshot(page, "objects.png")
    page.get_by_role("button", name="Show the whole photo's matches").click()
    assert page.locator("#results-title").inner_text() in ("Matching products", "No exact match — similar products")
    page.close()
