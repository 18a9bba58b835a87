"""`seesku eval vision|recommender`: measure exported models (the train extras)."""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from api.cli.train import sequence_file
from api.settings import REPO_ROOT

app = typer.Typer(help="Evaluate models (needs the train extras: make test installs them).", no_args_is_help=True)


@app.command("vision")
def eval_vision(
    data: Annotated[Path, typer.Option(exists=True, help="Grocery Store root, a product folder or a CSV")],
    split: Annotated[str, typer.Option(help="train, val or test")] = "val",
    model: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="exported model folder (manifest.json + ONNX)")
    ] = REPO_ROOT / "triton_models" / "product_embedder",
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON on stdout")] = False,
    out: Annotated[
        Path, typer.Option(help="folder for results JSON, per-class CSV and confusion matrix PNG")
    ] = REPO_ROOT / "training" / "reports",
    report: Annotated[
        Optional[Path], typer.Option(help="report to (re)write from every result in OUT; default OUT/<dataset>.md")
    ] = None,
    name: Annotated[Optional[str], typer.Option(help="label of this model in the report; default its model_id")] = None,
    runtime: Annotated[
        Optional[str], typer.Option(help="onnx or openvino; default the model's fastest (openvino for int8)")
    ] = None,
) -> None:
    """Evaluate an exported model on a split through the service's own preprocess and runtime."""
    from training.evaluate import evaluate, write_report

    try:
        result = evaluate(model, data, split, out, name=name, log=lambda m: typer.echo(m, err=True), runtime=runtime)
    except ValueError as exc:  # an empty split, a model trained on this split
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    path = write_report(out, report)
    typer.echo(f"report: {path}", err=True)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for key, value in result["metrics"].items():
            typer.echo(f"{key:32s} {value:.4f}")


@app.command("recommender")
def eval_recommender(
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="the sequence file the model was trained on")],
    model: Annotated[
        list[Path],
        typer.Option(
            exists=True,
            dir_okay=False,
            help="a best.pt checkpoint; repeat it to score an ensemble (mean log-probability)",
        ),
    ],
    split: Annotated[str, typer.Option(help="val or test")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
    out: Annotated[Optional[Path], typer.Option(help="also write the result JSON here")] = None,
) -> None:
    """Leave-one-out evaluation, full ranking against every item: HR@5/10/20 and NDCG@5/10/20."""
    from training.recommender.evaluate import EvaluationRefused, evaluate_checkpoints

    try:
        result = evaluate_checkpoints(model, sequence_file(data), split, data=str(data))
    except EvaluationRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    metrics = result["metrics"]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for key, value in metrics.items():
            typer.echo(f"{key:10s} {value:.4f}")


# The options of the commands that search through a service, as the service would run by default.
ServiceModel = Annotated[
    Optional[Path], typer.Option(exists=True, file_okay=False, help="model folder; default the service's")
]
ServiceRuntime = Annotated[Optional[str], typer.Option(help="onnx or openvino; default the service's")]


@app.command("channels")
def eval_channels(
    data: Annotated[Path, typer.Option(exists=True, help="Grocery Store root, a product folder or a CSV")],
    split: Annotated[str, typer.Option(help="train, val or test")] = "val",
    model: ServiceModel = None,
    runtime: ServiceRuntime = None,
    channel: Annotated[Optional[list[str]], typer.Option(help="a channel to deliver on (repeat); default all")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="only the first N photos of the split")] = None,
    name: Annotated[Optional[str], typer.Option(help="label of this run; default the model id")] = None,
    out: Annotated[Path, typer.Option(help="folder for the JSON and the table")] = REPO_ROOT
    / "training"
    / "reports"
    / "channels",
) -> None:
    """Top-1 of every photo of a split on every channel (re-encoded, resized, converted, EXIF-rotated),
    through the service's own search: per channel, the worst, and the agreement across channels."""
    from training.channels import CHANNELS, evaluate_channels, write

    unknown = sorted(set(channel or []) - set(CHANNELS))
    if unknown:
        typer.echo(f"error: unknown channel(s) {unknown}; known: {', '.join(CHANNELS)}", err=True)
        raise typer.Exit(2)
    with sample_catalogue_service(model, runtime) as service:
        try:
            result = evaluate_channels(
                data, split, service, service.settings.inference, channel, limit, log=lambda m: typer.echo(m, err=True)
            )
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    path = write(result, out, name or result["model"].replace(":", "-"), split)
    typer.echo(path.read_text(), err=True)
    typer.echo(json.dumps(result))


@app.command("open-set")
def eval_open_set(
    data: Annotated[Path, typer.Option(exists=True, help="Grocery Store root, a product folder or a CSV")],
    split: Annotated[str, typer.Option(help="val calibrates the rule; other splits measure the stored one")] = "val",
    model: ServiceModel = None,
    runtime: ServiceRuntime = None,
    non_products: Annotated[int, typer.Option(min=8, help="generated pictures of no product")] = 160,
    write_rule: Annotated[bool, typer.Option(help="on val: write match_rule.json into the model folder")] = True,
    threshold: Annotated[
        Optional[float],
        typer.Option(
            min=0,
            max=1,
            help="on val: this threshold instead of calibrating one (a final fit's val is memorised: give the one a train-only model of its recipe reached on val)",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for the result JSON")] = REPO_ROOT
    / "training"
    / "reports"
    / "open_set",
) -> None:
    """`matched` on photos in the catalogue, of products removed from it and of no product: AUROC and both
    error rates at the threshold (on val: calibrates the threshold and writes match_rule.json)."""
    from api.cli.common import command_line
    from training.open_set import NEGATIVE_QUANTILE, evaluate_open_set
    from vision.match_rule import MatchRule

    if threshold is not None and split != "val":
        typer.echo("error: --threshold sets the rule on val; other splits measure the stored one", err=True)
        raise typer.Exit(2)
    given = threshold
    with sample_catalogue_service(model, runtime) as service:
        model_dir = service.settings.model_dir
        result, threshold = evaluate_open_set(
            data,
            split,
            service,
            service.match_rule,
            non_products,
            log=lambda m: typer.echo(m, err=True),
            threshold=given,
        )
    if split == "val" and write_rule:
        rule = MatchRule(threshold, f"{data.name}:{split}", service.model_id, command_line(), result)
        how = "as given" if given is not None else f"the {NEGATIVE_QUANTILE}th percentile of the negatives"
        typer.echo(f"wrote {rule.save(model_dir)} ({how})", err=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"open-set-{service.model_id.replace(':', '-')}-{split}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result))


@app.command("objects")
def eval_objects(
    data: Annotated[Path, typer.Option(exists=True, help="Grocery Store root, a product folder or a CSV")],
    split: Annotated[str, typer.Option(help="val to choose on; test once, for the final row")] = "val",
    model: ServiceModel = None,
    runtime: ServiceRuntime = None,
    detector: Annotated[
        Optional[Path], typer.Option(exists=True, file_okay=False, help="detector folder; default the service's")
    ] = None,
    scenes: Annotated[int, typer.Option(min=1, help="composed scenes of 2-5 products")] = 200,
    singles: Annotated[Optional[int], typer.Option(min=1, help="only the first N single-product photos")] = None,
    name: Annotated[Optional[str], typer.Option(help="label of this run; default the detector id")] = None,
    out: Annotated[Path, typer.Option(help="folder for the JSON and the table")] = REPO_ROOT
    / "training"
    / "reports"
    / "objects",
) -> None:
    """Several products in one photo: AP@0.5, products found as an overlapping box's top match, false objects
    per photo, and single-product photos' top-1 with and without objects, through the service's search."""
    from training.detection.evaluate import evaluate_objects, write

    with sample_catalogue_service(model, runtime, detector) as service:
        if service.detector is None:
            typer.echo("error: no detector model (seesku train detector exports one)", err=True)
            raise typer.Exit(2)
        try:
            result = evaluate_objects(data, split, service, scenes, singles, log=lambda m: typer.echo(m, err=True))
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    path = write(result, out, name or result["detector"].replace(":", "-"), split)
    typer.echo(path.read_text(), err=True)
    typer.echo(json.dumps(result))


@contextmanager
def sample_catalogue_service(model: Path | None, runtime: str | None, detector: Path | None = None):
    """A catalogue service on a scratch data dir holding the sample catalogue (what `make run` serves)."""
    from api.catalog.csv_io import import_catalog_csv
    from api.catalog.service import CatalogService
    from api.settings import Settings

    chosen = {"model_dir": model, "inference": runtime, "detector_dir": detector}
    with tempfile.TemporaryDirectory(prefix="seesku-eval-") as scratch:
        settings = Settings(data_dir=Path(scratch), load_samples=False, **{k: v for k, v in chosen.items() if v})
        service = CatalogService(settings)
        service.open()
        try:
            import_catalog_csv(service, settings.sample_catalog)
            yield service
        finally:
            service.close()
