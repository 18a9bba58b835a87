"""`seesku serve`: the HTTP service."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from api.cli.common import check_database
from api.settings import Settings


def serve(
    host: Annotated[Optional[str], typer.Option(help="listen address (SEESKU_HOST)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (SEESKU_PORT)")] = None,
) -> None:
    """Run the HTTP service (one process per data dir; run more replicas for more throughput)."""
    import uvicorn

    from api.app import create_app
    from api.middleware.logs import configure_logging

    # The options override the environment in the settings the app is built with, so keys are required
    # when the server really listens beyond loopback, whichever way the address was given.
    overrides = {name: value for name, value in (("host", host), ("port", port)) if value is not None}
    settings = Settings(**overrides)
    configure_logging()
    check_database(settings)
    # seesku's own access log (JSON, request ids, no query strings or secrets) replaces uvicorn's.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=None,
        access_log=False,
    )
