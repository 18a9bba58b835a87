"""The `seesku` command line: one module per command group, each a thin layer over the service, tagging
and training code."""

from __future__ import annotations

import typer

from api.cli import catalog, db, evaluate, keys, quantize, serve, tag, train, train_detector, triton

app = typer.Typer(help="seesku: visual product recognition.", no_args_is_help=True, add_completion=False)
app.command()(serve.serve)
app.command()(catalog.search)
app.command()(tag.tag)
app.command("export-onnx")(train.export_onnx)
app.command("export-detector")(train_detector.export_detector)
app.command("quantize-detector")(train_detector.quantize_detector)
app.command()(quantize.quantize)
app.add_typer(catalog.app, name="catalog")
train.app.command("detector")(train_detector.train_detector)
app.add_typer(train.app, name="train")
app.add_typer(evaluate.app, name="eval")
app.add_typer(keys.app, name="keys")
app.add_typer(db.app, name="db")
app.add_typer(triton.app, name="triton")


def main() -> None:  # console-script entry point
    app()
