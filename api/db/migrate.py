"""The database's schema version: read it, upgrade it, and refuse one this code does not know.

Alembic keeps the revision in the `alembic_version` table. A catalogue from before the migrations (today's
embedded SQLite file, same tables, no revision) is stamped at the first revision and upgraded in place.
Several replicas starting at once upgrade one at a time: PostgreSQL under an advisory lock, SQLite under
its write lock.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from api.db.engine import reading

MIGRATIONS = Path(__file__).with_name("migrations")
UPGRADE_LOCK = 0x5EE5C0  # the advisory lock id PostgreSQL replicas upgrade under
FIRST_REVISION = "0001"


class SchemaError(RuntimeError):
    """The database's schema is not the one this code reads; the message says what to do."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    return _scripts().get_current_head()


def known_revisions() -> set[str]:
    return {script.revision for script in _scripts().walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for an empty database; FIRST_REVISION for a catalogue from
    before the migrations."""
    revision = MigrationContext.configure(connection).get_current_revision()
    if revision is None and inspect(connection).has_table("products"):
        return FIRST_REVISION
    return revision


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str]:
    """Migrate to `target`, the newest revision unless told; (revision before, revision after)."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({UPGRADE_LOCK})")
        before = current_revision(connection)
        _refuse_unknown(before)
        config = _config(connection)
        if before == FIRST_REVISION and MigrationContext.configure(connection).get_current_revision() is None:
            command.stamp(config, FIRST_REVISION)  # a catalogue from before the migrations
        command.upgrade(config, target)
        return before, head_revision() if target == "head" else target


def prepare(engine: Engine, auto_upgrade: bool) -> None:
    """At start-up: upgrade when allowed, otherwise refuse any schema but the newest."""
    with reading(engine) as connection:
        revision = current_revision(connection)
    _refuse_unknown(revision)
    if revision == head_revision():
        return
    if auto_upgrade:
        upgrade(engine)
        return
    raise SchemaError(
        f"the database is at schema revision {revision or 'none (empty)'}, this seesku reads {head_revision()}: "
        "run `seesku db upgrade` (or set SEESKU_DB_AUTO_UPGRADE=true)"
    )


def _refuse_unknown(revision: str | None) -> None:
    if revision is not None and revision not in known_revisions():
        raise SchemaError(
            f"the database is at schema revision {revision!r}, which this seesku does not know (it knows up to "
            f"{head_revision()}): it was migrated by a newer seesku; run that version, or point "
            "SEESKU_DATABASE_URL at another database"
        )
