"""The merchandiser's review and catalogue pages in a real browser, against a real server: a tagging job
reviewed, one photo made into a new product, applied, found through the camera page; then the catalogue
page finds that product and removes its photo."""

import zipfile

import pytest

from tests.conftest import SAMPLES, start_serve
from tests.system.conftest import screenshot

pytestmark = pytest.mark.slow
PRODUCT = {"id": "Stripy-Tea-Towel", "name": "Stripy tea towel", "fine": "Tea-Towel", "coarse": "Household"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base, proc = start_serve(
        {"SEESKU_DATA_DIR": str(tmp_path_factory.mktemp("review-data")), "SEESKU_ONNX_THREADS": "2"}
    )
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def search_top(browser, base, photo) -> tuple[str, str]:
    """(first product id, results title) of the camera page for `photo`."""
    page = browser.new_page(viewport={"width": 412, "height": 915}, is_mobile=True)
    page.goto(base + "/")
    page.locator("input#photo").set_input_files(str(photo))
    page.locator("ol#matches li").first.wait_for(timeout=30_000)
    top = page.locator("ol#matches li").first.get_attribute("data-product-id")
    title = page.locator("#results-title").inner_text()
    page.close()
    return top, title


def test_review_apply_then_find_it_and_edit_the_catalogue(server, browser, tmp_path):
    from training.open_set import non_product_photos

    stripes = tmp_path / "stripes.jpg"
    stripes.write_bytes(non_product_photos(1, seed=11)[0][1])  # no product the sample shop sells
    queries = sorted((SAMPLES / "queries").glob("*.jpg"))[:3]
    archive = tmp_path / "delivery.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(stripes, "shelf/stripes.jpg")
        for q in queries:
            z.write(q, f"shelf/{q.name}")
        z.write(queries[0], "shelf/copy.jpg")

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server + "/merchandiser")
    page.get_by_label("Choose a zip of photos").set_input_files(str(archive))
    page.get_by_role("button", name="Start tagging").click()
    page.get_by_role("link", name="Review the tags and add them to the catalogue").click(timeout=120_000)

    # Needs review by default: the stripes match no product, the copy is a duplicate.
    page.locator('#grid li[data-path="shelf/stripes.jpg"]').wait_for(timeout=30_000)
    assert page.locator('#filters button[aria-pressed="true"]').inner_text().startswith("Needs review")
    card = page.locator('#grid li[data-path="shelf/stripes.jpg"]')
    assert "unmatched" in card.locator(".reasons").inner_text()
    assert page.locator('#grid li[data-path="shelf/copy.jpg"] .reasons').inner_text().count("duplicate") == 1

    card.get_by_role("button", name="New product").click()
    form = card.get_by_role("form", name="New product")
    assert form.get_by_label("id").input_value() == "stripes"  # pre-filled from the file name
    for label, key in [("id", "id"), ("name", "name"), ("fine", "fine"), ("coarse", "coarse")]:
        form.get_by_label(label, exact=True).fill(PRODUCT[key])
    form.get_by_role("button", name="Create").click()
    page.wait_for_function(
        "() => document.querySelector('#grid li[data-path=\"shelf/stripes.jpg\"] .decision')"
        ".textContent === 'new product Stripy-Tea-Towel'"
    )

    # The keyboard path: every photo of the job, the first one focused, skipped with "s".
    page.get_by_role("button", name="All (5)").click()
    page.locator("#grid li").nth(4).wait_for()
    first = page.locator("#grid li").first.get_attribute("data-path")
    page.locator("#grid li").first.focus()
    page.keyboard.press("s")
    page.wait_for_function(
        f"() => document.querySelector('#grid li[data-path=\"{first}\"] .decision').textContent === 'skip'"
    )
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    screenshot(page, "review.png")

    page.get_by_role("button", name="Apply decisions").click()
    page.wait_for_function("() => document.querySelector('#apply-status').textContent.startsWith('Applied')")
    status = page.locator("#apply-status").inner_text()
    assert "1 products changed, 1 photos added" in status and "0 failed" in status, status
    page.close()

    # Searchable at once, through the shopper's camera page.
    assert search_top(browser, server, stripes) == ("Stripy-Tea-Towel", "Matching products")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server + "/catalog")
    page.get_by_label("Product id or name").fill("stripy")
    page.get_by_role("button", name="Find").click()
    page.get_by_role("button", name=PRODUCT["name"]).click()
    page.get_by_role("img", name="Reference photo").first.wait_for()
    assert page.locator("#product-title").inner_text() == "Stripy tea towel (Stripy-Tea-Towel)"
    assert page.get_by_label("Fine category").input_value() == "Tea-Towel"
    screenshot(page, "catalog.png")
    page.get_by_label("Name", exact=True).fill("Striped tea towel")
    page.get_by_role("button", name="Save").click()
    page.wait_for_function("() => document.querySelector('#saved').textContent === 'Saved.'")
    assert page.locator("#product-title").inner_text().startswith("Striped")
    assert page.get_by_role("button", name="Striped tea towel").count() == 1  # the list shows the new name
    page.get_by_role("button", name="Remove photo").first.click()
    page.wait_for_function("() => document.querySelector('#saved').textContent.includes('no longer matches')")
    assert page.locator("#photos img").count() == 0
    page.close()
    assert search_top(browser, server, stripes)[0] != "Stripy-Tea-Towel"
