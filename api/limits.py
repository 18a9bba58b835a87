"""Rate limits: one token bucket per caller (API key), `rate` requests a second on average, bursts up to
`burst`. 429 with Retry-After when a bucket is empty (api/auth.py).

`TokenBuckets` keeps the buckets in this process: the embedded default, one process. `SharedTokenBuckets`
keeps them in the database's `rate_limits` table, one row per caller updated under its row lock, so N
replicas on one PostgreSQL database grant one quota, not N (one round trip per limited request; the
buckets use wall-clock time, so replicas' clocks should agree to well under a second, as NTP keeps them).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from sqlalchemy import Engine, bindparam, select, update

from api.db import tables as db
from api.db.engine import dialect_insert


class RateLimits(Protocol):
    def take(self, caller: str) -> float:
        """0 when allowed (a token was taken); otherwise the seconds until a token is free."""


def take_token(tokens: float, last: float, now: float, rate: float, burst: int) -> tuple[float, float]:
    """The bucket rule: (tokens left, seconds to wait: 0 when a token was taken)."""
    tokens = min(float(burst), tokens + max(0.0, now - last) * rate)
    if tokens >= 1:
        return tokens - 1, 0.0
    return tokens, (1 - tokens) / rate


class TokenBuckets:
    """The buckets in this process."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller, (float(self.burst), now))
            tokens, wait = take_token(tokens, last, now, self.rate, self.burst)
            self._buckets[caller] = (tokens, now)
            return wait


class SharedTokenBuckets:
    """The buckets in the database, shared by every replica."""

    def __init__(self, engine: Engine, rate: float, burst: int):
        self.engine, self.rate, self.burst = engine, rate, burst
        self._new = (
            dialect_insert(engine)(db.rate_limits)
            .values(caller=bindparam("caller"), tokens=float(burst), updated=bindparam("now"))
            .on_conflict_do_nothing(index_elements=["caller"])
        )

    def take(self, caller: str) -> float:
        now = time.time()
        buckets = db.rate_limits
        with self.engine.begin() as conn:
            conn.execute(self._new, {"caller": caller, "now": now})
            tokens, last = conn.execute(
                select(buckets.c.tokens, buckets.c.updated).where(buckets.c.caller == caller).with_for_update()
            ).one()
            tokens, wait = take_token(tokens, last, now, self.rate, self.burst)
            conn.execute(update(buckets).where(buckets.c.caller == caller).values(tokens=tokens, updated=now))
        return wait


def create_rate_limits(engine: Engine, rate: float, burst: int) -> RateLimits:
    """Shared buckets on a database several replicas use (PostgreSQL); this process's on SQLite."""
    if engine.dialect.name == "postgresql":
        return SharedTokenBuckets(engine, rate, burst)
    return TokenBuckets(rate, burst)
