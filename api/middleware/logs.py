"""Structured logs: one JSON object per line, a request id on every request, secrets redacted."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

access_log = logging.getLogger("seesku.access")
SECRET = re.compile(r"(sk_[A-Za-z0-9]+_)[A-Za-z0-9_\-]+")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
FIELDS = ("request_id", "method", "path", "status", "ms", "key_id", "channel")


def redact(text: str) -> str:
    """API key secrets never reach a log line: `sk_<id>_<secret>` becomes `sk_<id>_***`."""
    return SECRET.sub(r"\1***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        entry.update({k: getattr(record, k) for k in FIELDS if getattr(record, k, None) is not None})
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class RequestLogMiddleware:
    """Pure ASGI: gives each request an id (the caller's X-Request-ID when sane), returns it as a header,
    and writes one access line with method, path (never the query string), status, time and key id."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start, status = time.perf_counter(), 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            key = scope.get("state", {}).get("api_key")
            access_log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "ms": round((time.perf_counter() - start) * 1e3, 2),
                    "key_id": key.key_id if key else None,
                    "channel": headers.get(b"x-channel", b"api").decode("latin-1")[:16],
                },
            )
