"""One SQLAlchemy engine per database URL, with the settings each backend needs for crash safety."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url


def default_url(data_dir: Path) -> str:
    """The embedded default: today's SQLite file under the data dir."""
    return f"sqlite:///{(data_dir / 'catalog.sqlite3').resolve()}"


def create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.get_backend_name() == "postgresql":
        # pre_ping: a replica whose connections died with a restarted server reconnects by itself.
        return sa_create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True, pool_timeout=10)
    raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql+psycopg://")


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa_create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        # The driver's own transaction handling is off: the store says BEGIN IMMEDIATE itself (a writer that
        # waits for the lock up front cannot deadlock against another writer, as a read upgraded to a
        # write can).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged change survives a power cut, not only a crashed process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def dialect_insert(engine: Engine):
    """The dialect's `insert`, which has ON CONFLICT (SQLite and PostgreSQL spell it alike)."""
    return (postgresql if engine.dialect.name == "postgresql" else sqlite).insert


def reading(engine: Engine) -> Connection:
    """A connection for reads, each statement on its own: no transaction held open, and on SQLite no write
    lock taken (use it as a context manager)."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
