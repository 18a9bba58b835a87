"""`seesku keys create|list|revoke`: API keys in the database (`SEESKU_DATABASE_URL`)."""

from __future__ import annotations

from typing import Annotated

import typer

from api.cli.common import check_database
from api.settings import Settings

app = typer.Typer(help="API keys (hashed at rest) with scopes: search, catalog:write, admin.", no_args_is_help=True)


def _key_store():
    from api.auth import KeyStore

    settings = Settings()
    check_database(settings)
    return KeyStore(settings.database())


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what the key is for")],
    scope: Annotated[list[str], typer.Option(help="search, catalog:write or admin; repeat for several")],
) -> None:
    """Create a key; its secret is printed once and only its hash is stored."""
    store = _key_store()
    try:
        key, token = store.create(name, scope)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    finally:
        store.close()
    typer.echo(
        f"created key {key.key_id} ({name}) with scopes {' '.join(key.scopes)}; keep the secret, it is not shown again:",
        err=True,
    )
    typer.echo(token)


@app.command("list")
def keys_list() -> None:
    """Keys with their scopes and state (never their secrets)."""
    store = _key_store()
    try:
        for key in store.list():
            state = "revoked" if key.revoked else "active"
            typer.echo(f"{key.key_id}  {state:7s}  {' '.join(key.scopes):28s}  {key.name}")
    finally:
        store.close()


@app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the id shown by `seesku keys list`")]) -> None:
    """Revoke a key at once (running servers check every request)."""
    store = _key_store()
    try:
        if not store.revoke(key_id):
            typer.echo(f"error: no active key {key_id!r}", err=True)
            raise typer.Exit(1)
    finally:
        store.close()
    typer.echo(f"revoked {key_id}", err=True)
