"""The web pages: camera search for shoppers; tagging, review and the catalogue for merchandisers. Static
files that call the public API, no CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

WEB = Path(__file__).resolve().parents[1] / "web"
router = APIRouter(include_in_schema=False)


@router.get("/")
def search_page() -> FileResponse:
    return FileResponse(WEB / "search.html", media_type="text/html")


@router.get("/merchandiser")
def merchandiser_page() -> FileResponse:
    return FileResponse(WEB / "merchandiser.html", media_type="text/html")


@router.get("/review")
def review_page() -> FileResponse:
    return FileResponse(WEB / "review.html", media_type="text/html")


@router.get("/catalog")
def catalog_page() -> FileResponse:
    return FileResponse(WEB / "catalog.html", media_type="text/html")
