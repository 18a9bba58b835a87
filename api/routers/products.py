"""Products and their reference photos: the merchandiser's side of the catalogue."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, File, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from api.catalog.records import Product
from api.catalog.service import CatalogService, Photo
from api.deps import get_service
from api.errors import ApiError, validation_error
from api.presenters import image_out, product_out
from api.schemas import (
    PRODUCT_ID_PATTERN,
    ErrorResponse,
    ImageOut,
    ImagesAdded,
    ProductCreate,
    ProductOut,
    ProductPage,
    ProductPatch,
)
from api.uploads import check_content_length, read_capped

router = APIRouter(prefix="/v1/products", tags=["products"])
Service = Annotated[CatalogService, Depends(get_service)]
ProductId = Annotated[str, Path(pattern=PRODUCT_ID_PATTERN, description="e.g. Granny-Smith")]
# SQLite row ids: a larger number can name no photo (and would overflow the query's integer).
ImageId = Annotated[int, Path(ge=1, le=2**63 - 1)]
ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


def load_product(service: CatalogService, product_id: str) -> ProductOut:
    return product_out(*service.get_product(product_id))


@router.post("", status_code=201, response_model=ProductOut, responses={409: {"model": ErrorResponse}, **ERRORS})
def create_product(body: ProductCreate, service: Service) -> ProductOut:
    """Create a product; add its reference photos with POST /v1/products/{id}/images."""
    product = Product(**body.model_dump())
    service.put_product(product, create_only=True)
    return load_product(service, product.product_id)


@router.get("", response_model=ProductPage, responses=ERRORS)
def list_products(
    service: Service,
    category: Annotated[str | None, Query(description="fine or coarse category")] = None,
    q: Annotated[str | None, Query(max_length=200, description="part of the product id or name, any case")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ProductPage:
    after = _decode_cursor(cursor) if cursor else None
    page = service.list_products(category, after, limit + 1, q)
    more = len(page) > limit
    page = page[:limit]
    next_cursor = _encode_cursor(page[-1][0].product_id) if more else None
    return ProductPage(items=[product_out(p, images) for p, images in page], next_cursor=next_cursor)


def _encode_cursor(product_id: str) -> str:
    return base64.urlsafe_b64encode(product_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        after = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
        if not after:
            raise ValueError(cursor)
        return after
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(422, "invalid_cursor", "cursor is not a next_cursor this API returned") from None


@router.get("/{product_id}", response_model=ProductOut, responses=ERRORS)
def get_product(product_id: ProductId, service: Service) -> ProductOut:
    return load_product(service, product_id)


@router.patch("/{product_id}", response_model=ProductOut, responses=ERRORS)
def update_product(product_id: ProductId, body: ProductPatch, service: Service) -> ProductOut:
    changes = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None and name != "description":
            raise validation_error([{"loc": ["body", name], "msg": "may not be null", "type": "null"}])
    service.update_product(product_id, changes)
    return load_product(service, product_id)


@router.delete("/{product_id}", status_code=204, responses=ERRORS)
def delete_product(product_id: ProductId, service: Service) -> Response:
    """Delete a product, its photos and their vectors: it stops matching at once."""
    service.delete_product(product_id)
    return Response(status_code=204)


@router.post(
    "/{product_id}/images",
    status_code=201,
    response_model=ImagesAdded,
    responses={413: {"model": ErrorResponse}, **ERRORS},
)
async def add_images(
    request: Request,
    product_id: ProductId,
    service: Service,
    images: Annotated[list[UploadFile], File(description="one or more reference photos")],
) -> ImagesAdded:
    """Add reference photos; all are embedded and indexed together, or none is (a bad photo is named)."""
    settings = service.settings
    if len(images) > settings.max_images_per_request:
        raise ApiError(422, "too_many_images", f"at most {settings.max_images_per_request} photos per request")
    check_content_length(request, settings.max_upload_bytes, parts=len(images))
    photos = [Photo(await read_capped(f, settings.max_upload_bytes), f.filename or "") for f in images]
    added = await run_in_threadpool(service.add_photos, product_id, photos)
    return ImagesAdded(
        product_id=product_id, added=[image_out(i) for i in added], skipped_duplicates=len(photos) - len(added)
    )


@router.get("/{product_id}/images", response_model=list[ImageOut], responses=ERRORS)
def list_images(product_id: ProductId, service: Service) -> list[ImageOut]:
    _, images = service.get_product(product_id)
    return [image_out(i) for i in images]


@router.get("/{product_id}/images/{image_id}", response_class=Response, responses=ERRORS)
def get_image(product_id: ProductId, image_id: ImageId, service: Service) -> Response:
    record, data = service.photo_bytes(product_id, image_id)
    return Response(data, media_type=record.content_type, headers={"Cache-Control": "public, max-age=86400"})


@router.get("/{product_id}/images/{image_id}/thumbnail", response_class=Response, responses=ERRORS)
def get_thumbnail(
    product_id: ProductId, image_id: ImageId, service: Service, size: Annotated[int, Query(ge=32, le=1024)] = 256
) -> Response:
    data = service.photo_thumbnail(product_id, image_id, size)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})


@router.delete("/{product_id}/images/{image_id}", status_code=204, responses=ERRORS)
def delete_image(product_id: ProductId, image_id: ImageId, service: Service) -> Response:
    service.delete_photo(product_id, image_id)
    return Response(status_code=204)
