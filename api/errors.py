"""Every error leaves as `{"error": {"code", "message", "details"}}` with the right 4xx/5xx."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.catalog.records import AlreadyExists, IndexUnavailable, NotFound, PhotoError, UnknownCategory, UnknownProducts
from vision.preprocess import ImageError, ImageTooLargeError
from vision.runtimes import EmbedderUnavailable

IMAGE_STATUS = {ImageTooLargeError: 413}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details=None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers


def error_response(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def validation_error(errors: list[dict]) -> ApiError:
    """The one 422 for bad input: the first problem as the message (`where: what`), every one in details."""
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    return ApiError(422, "validation_error", f"{where}: {first['msg']}" if where else first["msg"], errors)


def image_status(exc: ImageError) -> int:
    return IMAGE_STATUS.get(type(exc), 422)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(ImageError)
    async def _image(_: Request, exc: ImageError):
        return error_response(image_status(exc), exc.code, str(exc))

    @app.exception_handler(PhotoError)
    async def _photo(_: Request, exc: PhotoError):
        return error_response(
            image_status(exc.error), exc.error.code, str(exc), {"photo": exc.position, "filename": exc.name}
        )

    @app.exception_handler(EmbedderUnavailable)
    async def _inference(_: Request, exc: EmbedderUnavailable):
        # Nothing was written: catalogue writes embed before they touch the store.
        return error_response(
            503, "inference_unavailable", f"the model server cannot answer now: {exc}", headers={"Retry-After": "1"}
        )

    @app.exception_handler(OperationalError)
    async def _database(_: Request, exc: OperationalError):
        # The database is down, restarting or unreachable: the transaction rolled back (or never began), so
        # nothing is half-written, and the engine's pre-ping reconnects once it is back.
        return error_response(
            503,
            "database_unavailable",
            "the catalogue database cannot be reached now; retry",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(IndexUnavailable)
    async def _index(_: Request, exc: IndexUnavailable):
        return error_response(
            503, "index_unavailable", f"the vector index cannot answer now: {exc}", headers={"Retry-After": "1"}
        )

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound):
        return error_response(404, "not_found", f"no such product or photo: {exc.args[0]}")

    @app.exception_handler(AlreadyExists)
    async def _exists(_: Request, exc: AlreadyExists):
        return error_response(409, "already_exists", f"product {exc.args[0]!r} already exists; PATCH it instead")

    @app.exception_handler(UnknownCategory)
    async def _category(_: Request, exc: UnknownCategory):
        return error_response(
            422,
            "unknown_category",
            f"no product has the fine or coarse category {exc.args[0]!r}; see GET /v1/categories",
        )

    @app.exception_handler(UnknownProducts)
    async def _unknown_products(_: Request, exc: UnknownProducts):
        details = [{"event": position, "product_id": product_id} for position, product_id in exc.missing]
        return error_response(422, "unknown_product", str(exc), details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        error = validation_error(errors)
        return error_response(error.status, error.code, error.message, error.details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        codes = {
            404: "not_found",
            405: "method_not_allowed",
            408: "request_timeout",
            413: "payload_too_large",
            503: "unavailable",
        }
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers
        )
