"""The rate limit's token buckets: this process's and the database's follow one rule, and the database's
is one bucket for every replica (two stores on one database share it)."""

import pytest

from api.db.engine import create_engine
from api.db.migrate import upgrade
from api.limits import SharedTokenBuckets, TokenBuckets, create_rate_limits, take_token
from tests.conftest import fresh_postgres_database


def test_the_bucket_rule():
    tokens, wait = take_token(1.0, 0.0, 0.0, rate=2.0, burst=3)
    assert (tokens, wait) == (0.0, 0.0)
    tokens, wait = take_token(tokens, 0.0, 0.25, rate=2.0, burst=3)  # half a token back after 0.25 s
    assert tokens == pytest.approx(0.5) and wait == pytest.approx(0.25)
    assert take_token(0.0, 0.0, 100.0, rate=2.0, burst=3) == (2.0, 0.0)  # refills up to the burst only


def test_in_process_buckets_allow_the_burst_then_say_how_long_to_wait():
    buckets = TokenBuckets(rate=0.01, burst=3)
    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") > 1 and buckets.take("other") == 0.0


def test_replicas_on_one_postgres_share_one_bucket(postgres_server):
    url = fresh_postgres_database(postgres_server)
    first, second = create_engine(url), create_engine(url)
    upgrade(first)
    a, b = create_rate_limits(first, 0.01, 4), create_rate_limits(second, 0.01, 4)
    assert isinstance(a, SharedTokenBuckets)
    answers = [bucket.take("key-1") for bucket in (a, b, a, b, a, b)]
    assert answers[:4] == [0.0] * 4 and all(wait > 1 for wait in answers[4:])
    assert b.take("key-2") == 0.0  # per key
    first.dispose()
    second.dispose()


def test_sqlite_keeps_the_buckets_in_the_process(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    assert isinstance(create_rate_limits(engine, 1.0, 2), TokenBuckets)
    engine.dispose()
