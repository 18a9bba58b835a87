"""API keys with scopes, per-key rate limits, and the dependency that checks both on every request.

Keys look like `sk_<key_id>_<secret>`; only the SHA-256 of the secret is stored (keys are long random
tokens, so a fast hash is enough and a leaked database reveals no usable key). Scopes:
- `search`: shopper channels: search, events, recommendations, reading the catalogue;
- `catalog:write`: merchandisers: product and photo changes, tagging jobs;
- `admin`: everything, including /metrics.
Each key has a token-bucket rate limit (429 with Retry-After; api/limits.py).
Keys are required whenever the server listens on a non-loopback address (or SEESKU_REQUIRE_KEYS=true);
the localhost demo of `make run` runs without them and says so at start.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine, insert, select, update

from api.db.engine import reading
from api.db.tables import api_keys
from api.errors import ApiError

SCOPES = ("search", "catalog:write", "admin")
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
KEY_FIELDS = (api_keys.c.key_id, api_keys.c.name, api_keys.c.scopes, api_keys.c.created, api_keys.c.revoked)


@dataclass
class ApiKey:
    key_id: str
    name: str
    scopes: list[str]
    created: float
    revoked: float | None = None


class KeyStore:
    """API keys in the shared database (api/db/tables.py `api_keys`): every replica sees the same keys."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise ValueError(f"unknown or missing scope(s) {bad}; choose from {list(SCOPES)}")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = ApiKey(key_id, name, sorted(set(scopes)), time.time())
        with self.engine.begin() as conn:
            conn.execute(
                insert(api_keys).values(
                    key_id=key_id,
                    name=name,
                    scopes=" ".join(key.scopes),
                    secret_sha256=_digest(secret),
                    created=key.created,
                )
            )
        return key, f"sk_{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        with reading(self.engine) as conn:
            rows = conn.execute(select(*KEY_FIELDS).order_by(api_keys.c.created)).all()
        return [ApiKey(k, n, s.split(), c, r) for k, n, s, c, r in rows]

    def revoke(self, key_id: str) -> bool:
        with self.engine.begin() as conn:
            revoked = conn.execute(
                update(api_keys)
                .where((api_keys.c.key_id == key_id) & api_keys.c.revoked.is_(None))
                .values(revoked=time.time())
            )
            return revoked.rowcount == 1

    def check(self, token: str) -> ApiKey | None:
        """The live key a presented token belongs to, or None. Read from the database on every request, so a
        key revoked through one replica fails on every other at once."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "sk":
            return None
        with reading(self.engine) as conn:
            row = conn.execute(
                select(*KEY_FIELDS, api_keys.c.secret_sha256).where(api_keys.c.key_id == parts[1])
            ).first()
        if row is None or row[4] is not None or not hmac.compare_digest(row[5], _digest(parts[2])):
            return None
        return ApiKey(row[0], row[1], row[2].split(), row[3], row[4])

    def close(self) -> None:
        """Nothing to release: the engine belongs to the settings that made it."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authorise(read_scope: str, write_scope: str | None = None):
    """A dependency: the caller's key must hold `read_scope` for reads and `write_scope` for writes
    (admin holds every scope); each key is rate limited."""

    def dependency(
        request: Request,
    ) -> ApiKey | None:  # sync: FastAPI runs it off the event loop (it reads the database)
        state = request.app.state
        needed = read_scope if request.method in READ_METHODS or write_scope is None else write_scope
        key = None
        if state.require_keys:
            token = _presented_token(request)
            if token is None:
                raise ApiError(
                    401, "missing_api_key", "send an API key as 'Authorization: Bearer sk_...' or 'X-API-Key'"
                )
            key = state.keys.check(token)
            if key is None:
                raise ApiError(401, "invalid_api_key", "the API key is unknown or revoked")
            if needed not in key.scopes and "admin" not in key.scopes:
                raise ApiError(
                    403, "insufficient_scope", f"this key lacks the '{needed}' scope", {"scopes": key.scopes}
                )
        wait = state.rate_limits.take(key.key_id) if key else 0.0  # the keyless loopback demo is not limited
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests; retry in {wait:.2f} s",
                {"retry_after_s": round(wait, 3)},
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        request.state.api_key = key
        return key

    return dependency


def _presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None
