"""Reading uploaded photos: multipart or a raw body, never more bytes than the limit allows."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile  # what request.form() yields; FastAPI's subclasses it

from api.errors import ApiError
from vision.preprocess import ImageTooLargeError

# multipart framing around one photo: boundaries, part headers and small form fields
MULTIPART_OVERHEAD = 64 * 1024


def check_content_length(request: Request, limit: int, parts: int = 1) -> None:
    """Refuse an oversized body from its header, before reading it."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit * parts + MULTIPART_OVERHEAD:
        raise ImageTooLargeError(f"the request body is {length} bytes; the photo limit is {limit} bytes")


async def read_capped(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLargeError(f"{upload.filename or 'the photo'} is larger than the limit of {limit} bytes")
    return data


async def read_body_capped(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ImageTooLargeError(f"the photo is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_search_photo(request: Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """The photo and any form fields of a search request (multipart field `image`, or a raw body)."""
    check_content_length(request, limit)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        try:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "missing_image", "send the photo as the multipart file field 'image'")
            data = await read_capped(upload, limit)
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        finally:
            await form.close()
        return data, fields
    if content_type.startswith("application/x-www-form-urlencoded"):
        raise ApiError(415, "unsupported_media_type", "send the photo as multipart/form-data or as a raw image body")
    return await read_body_capped(request, limit), {}
