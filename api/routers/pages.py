"""The web pages: camera search for shoppers; tagging, review and the catalogue for merchandisers. Static
files that call the public API, no CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

WEB = Path(__file__).resolve().parents[1] / "web"
router = APIRouter(include_in_schema=False)


PAGES = {"/": "search.html", "/merchandiser": "merchandiser.html", "/review": "review.html", "/catalog": "catalog.html"}


def _page(file: str):
    def page() -> FileResponse:
        return FileResponse(WEB / file, media_type="text/html")

    return page


for path, file in PAGES.items():
    router.add_api_route(path, _page(file), methods=["GET"], name=file.removesuffix(".html"))
