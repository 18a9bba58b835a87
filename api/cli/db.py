"""`seesku db upgrade|current`: the database's schema version (`SEESKU_DATABASE_URL`)."""

from __future__ import annotations

import typer

from api.settings import Settings

app = typer.Typer(help="The database's schema: migrate it, or say where it stands.", no_args_is_help=True)


def _engine():
    from api.db.engine import create_engine

    return create_engine(Settings().database_target())


@app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to this version's schema (an empty one is created; a catalogue from before the
    migrations is adopted in place)."""
    from api.db.migrate import SchemaError, upgrade

    try:
        before, after = upgrade(_engine())
    except SchemaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"schema revision {before or 'none'} -> {after}")


@app.command("current")
def db_current() -> None:
    """The database's schema revision and the one this version reads."""
    from api.db.engine import reading
    from api.db.migrate import current_revision, head_revision

    with reading(_engine()) as connection:
        revision = current_revision(connection)
    typer.echo(f"database: {revision or 'none (empty)'}; this seesku: {head_revision()}")
