"""`seesku catalog import|export` and `seesku search`: the catalogue of the data dir from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from api.cli.common import open_service, progress_bar
from api.settings import Settings

app = typer.Typer(help="Import and export the catalogue in the data dir.", no_args_is_help=True)


@app.command("import")
def catalog_import(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="catalogue CSV; photo paths relative to it")
    ],
) -> None:
    """Add or update the products of a CSV (product_id, name, fine_category, coarse_category, description, images)."""
    from api.catalog.csv_io import import_catalog_csv

    service = open_service(Settings())
    try:
        progress, update = progress_bar("importing")
        with progress:
            count = import_catalog_csv(service, file, progress=update)
        typer.echo(
            f"imported {count} products; catalogue has {service.count_products()} products, "
            f"{service.vectors} photos indexed"
        )
    finally:
        service.close()


@app.command("export")
def catalog_export(
    out: Annotated[Path, typer.Argument(file_okay=False, help="folder for catalog.csv and photos")],
) -> None:
    """Write the catalogue as catalog.csv plus its photos (the import format)."""
    from api.catalog.csv_io import export_catalog_csv

    service = open_service(Settings())
    try:
        count = export_catalog_csv(service, out)
        typer.echo(f"exported {count} products to {out / 'catalog.csv'}")
    finally:
        service.close()


def search(
    photo: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    k: Annotated[int, typer.Option(min=1, max=100)] = 10,
    category: Annotated[Optional[str], typer.Option(help="fine or coarse category filter")] = None,
    objects: Annotated[bool, typer.Option("--objects", help="also each product found in the photo, boxed")] = False,
) -> None:
    """Search the catalogue in the data dir with a photo; prints the API's JSON answer."""
    from api.catalog.objects import DetectorUnavailable
    from api.presenters import search_answer
    from api.schemas import Channel

    service = open_service(Settings())
    try:
        result = service.search(photo.read_bytes(), k, category, objects=objects)
        typer.echo(json.dumps(search_answer(result, service.manifest, Channel.batch.value), indent=2))
    except DetectorUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        service.close()
