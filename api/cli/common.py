"""What the commands share: progress bars on stderr (stdout stays clean for JSON), opening the catalogue,
and the command line as typed (recorded in what a command produces)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from api.settings import Settings

THREADS_HELP = "PyTorch threads; 0 = every core (lower it to share the machine with another job)"


def progress_bar(description: str, *fields: str) -> tuple[Progress, Callable[[int, int], None]]:
    """A rich progress bar and its `update(done, total)`; `fields`: extra columns shown as `name value`."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    progress = Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True))
    task = progress.add_task(description, total=None, **{name: "-" for name in fields})
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


def check_database(settings: Settings) -> None:
    """Open the database (migrating it when allowed) or stop with what to do: a schema this version does not
    know, or one to migrate with `seesku db upgrade`."""
    from api.db.migrate import SchemaError

    try:
        settings.database()
    except SchemaError as exc:
        import typer

        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def open_service(settings: Settings):
    """The catalogue of the data dir, opened (re-embedding photos stored by another model, with progress)."""
    from api.catalog.service import CatalogService

    check_database(settings)
    service = CatalogService(settings)
    progress, update = progress_bar("re-embedding")
    with progress:
        service.open(progress=update)
    return service


def command_line() -> str:
    return " ".join(["seesku", *sys.argv[1:]])
