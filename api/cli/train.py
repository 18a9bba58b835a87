"""`seesku train vision|recommender` and `seesku export-onnx`: training and export (the train extras).

The one part of the API package that imports training/ (with api/cli/evaluate.py and api/cli/quantize.py): the
service never does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from api.cli.common import THREADS_HELP, command_line, progress_bar
from api.settings import REPO_ROOT, Settings

app = typer.Typer(help="Train models (needs the train extras: make test installs them).", no_args_is_help=True)


@app.command("vision")
def train_vision(
    out: Annotated[Path, typer.Option(help="run folder: checkpoints, history, exported model")],
    data: Annotated[
        Optional[Path],
        typer.Option(
            exists=True, help="Grocery Store root, a folder per product, or a CSV of path,product_id,fine,coarse"
        ),
    ] = None,
    from_catalog: Annotated[
        bool,
        typer.Option(
            "--from-catalog",
            help="train on the catalogue's own reference photos (the data dir's; merchandisers' applied decisions included)",
        ),
    ] = False,
    init: Annotated[
        Optional[Path], typer.Option(exists=True, help="a fine-tuned checkpoint to start from instead of ImageNet")
    ] = None,
    backbone: Annotated[str, typer.Option(help="tf_efficientnet_lite0/1/2")] = "tf_efficientnet_lite0",
    epochs: Annotated[int, typer.Option(min=1)] = 15,
    sizes: Annotated[str, typer.Option(help="training resolutions, one per equal share of the epochs")] = "160,192,224",
    freeze_blocks: Annotated[int, typer.Option(min=0, help="backbone blocks kept frozen after the stem")] = 2,
    lr: Annotated[
        float, typer.Option(help="peak learning rate of the heads; the backbone gets lr x backbone-lr-mult")
    ] = 2e-3,
    backbone_lr_mult: Annotated[float, typer.Option()] = 0.2,
    channel_p: Annotated[
        float, typer.Option(min=0, max=1, help="share of photos re-delivered by a channel (re-encoded, resized) first")
    ] = 0.0,
    consistency: Annotated[
        float, typer.Option(min=0, help="weight of the loss between a photo's answer and its channel twin's (0: off)")
    ] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    max_steps_per_epoch: Annotated[int, typer.Option(help="0: full epochs")] = 0,
    threads: Annotated[int, typer.Option(min=0, help=THREADS_HELP)] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/last.pt")] = False,
    export: Annotated[bool, typer.Option(help="export the best checkpoint to OUT/product_embedder when done")] = True,
    fit_through: Annotated[
        Literal["train", "val"],
        typer.Option(
            help="train: keep the epoch with the best val fine top-1; val: the final fit, on train + val for exactly --epochs (choose the recipe with train first)"
        ),
    ] = "train",
) -> None:
    """Fine-tune the product model; a checkpoint every epoch, the best one (validation fine top-1) exported."""
    from training.progress import TrainProgress
    from training.vision import TrainConfig, train

    if (data is None) == (not from_catalog):
        raise typer.BadParameter("give --data DIR or --from-catalog, one of them")
    if from_catalog:
        data = catalogue_training_csv(out / "catalog")
    config = TrainConfig(
        data=str(data),
        init=str(init) if init else None,
        out=str(out),
        backbone=backbone,
        epochs=epochs,
        sizes=[int(s) for s in sizes.split(",")],
        freeze_blocks=freeze_blocks,
        lr=lr,
        backbone_lr_mult=backbone_lr_mult,
        channel_p=channel_p,
        consistency_weight=consistency,
        seed=seed,
        max_steps_per_epoch=max_steps_per_epoch,
        threads=threads,
        fit_through=fit_through,
    )
    with TrainProgress() as ui:
        best = train(config, resume=resume, ui=ui)
    typer.echo(f"best checkpoint: {best}", err=True)
    if export:
        queries = REPO_ROOT / "samples" / "queries.csv"
        export_checkpoint(best, out / "product_embedder", queries if queries.exists() else None)


def catalogue_training_csv(folder: Path) -> Path:
    """The catalogue of the data dir as training data: its photos and a CSV of path, product_id, fine, coarse
    (each fine category's first photo its catalogue photo; the rest split by a hash of the path, as any CSV)."""
    import csv

    from api.catalog.csv_io import export_catalog_csv
    from api.cli.common import open_service

    service = open_service(Settings())
    try:
        products = export_catalog_csv(service, folder)
    finally:
        service.close()
    rows, anchored = [], set()
    with open(folder / "catalog.csv", newline="", encoding="utf-8") as f:
        for product in csv.DictReader(f):
            for path in filter(None, product["images"].split(";")):
                iconic = product["fine_category"] not in anchored
                anchored.add(product["fine_category"])
                rows.append(
                    [path, product["product_id"], product["fine_category"], product["coarse_category"], int(iconic)]
                )
    with open(folder / "training.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "product_id", "fine", "coarse", "iconic"])
        writer.writerows(rows)
    typer.echo(f"{products} products, {len(rows)} photos from the catalogue: {folder / 'training.csv'}", err=True)
    return folder / "training.csv"


def export_checkpoint(checkpoint: Path, out: Path, queries: Path | None, **options) -> None:
    from training.export import export_trained

    manifest = export_trained(checkpoint, out, queries_csv=queries, log=lambda m: typer.echo(m, err=True), **options)
    typer.echo(f"exported {manifest.model_id} to {out}", err=True)
    json.dump(manifest.metrics, sys.stdout, indent=2)
    typer.echo()


# The recommender's recipe options (defaults: training/reports/recommender/ablation.md).
HeadOption = Annotated[
    Literal["mlp", "none"], typer.Option(help="user vector: an MLP over the last state, or the state itself")
]
LossOption = Annotated[
    Literal["ce", "sampled"],
    typer.Option(help="ce: softmax over every item; sampled: over the target and --negatives random items"),
]
NegativesPerOption = Annotated[
    Literal["batch", "position"], typer.Option(help="one draw of negatives per batch, or per position")
]


@app.command("recommender")
def train_recommender(
    out: Annotated[Path, typer.Option(help="run folder: checkpoints and history")],
    data: Annotated[
        Optional[Path],
        typer.Option(
            exists=True, dir_okay=False, help="sequence file (one user a line, items in time order) or events CSV"
        ),
    ] = None,
    from_events: Annotated[
        bool, typer.Option("--from-events", help="train on the events stored in the data dir")
    ] = False,
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    dim: Annotated[int, typer.Option(min=8)] = 256,
    max_len: Annotated[int, typer.Option(min=2)] = 50,
    lr: Annotated[float, typer.Option()] = 1e-3,
    batch: Annotated[int, typer.Option(min=1, help="users per step")] = 128,
    dropout: Annotated[float, typer.Option(min=0, max=0.9)] = 0.2,
    blocks: Annotated[int, typer.Option(min=1, help="self-attention blocks")] = 1,
    heads: Annotated[int, typer.Option(min=1, help="attention heads (must divide --dim)")] = 1,
    head: HeadOption = "none",
    loss: LossOption = "sampled",
    negatives: Annotated[int, typer.Option(min=1, help="negatives of the sampled softmax")] = 256,
    negatives_per: NegativesPerOption = "position",
    untied: Annotated[bool, typer.Option("--untied", help="score answers with their own item table")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    cl_weight: Annotated[float, typer.Option(min=0, help="weight of the contrastive regulariser (0 = off)")] = 0.0,
    cl_temperature: Annotated[float, typer.Option(min=0.01)] = 1.0,
    fit_through: Annotated[
        Literal["train", "val"],
        typer.Option(
            help="train: hold out the validation item and stop on it; val: refit through it for exactly --epochs"
        ),
    ] = "train",
    threads: Annotated[int, typer.Option(min=0, help=THREADS_HELP)] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/last.pt")] = False,
    export_to: Annotated[
        Optional[Path],
        typer.Option(
            help="export the best model (ONNX + manifest) to this folder, e.g. triton_models/user_recommender"
        ),
    ] = None,
) -> None:
    """Train the self-attention recommender (defaults: the recipe of training/reports/recommender/ablation.md; early stopping on validation NDCG@10)."""
    from training.recommender.config import RecommenderConfig

    if (data is None) == (not from_events):
        typer.echo("error: pass exactly one of --data FILE or --from-events", err=True)
        raise typer.Exit(2)
    seqs = events_sequences(Settings()) if from_events else sequence_file(data)
    config = RecommenderConfig(
        data=str(data or "events"),
        out=str(out),
        epochs=epochs,
        dim=dim,
        max_len=max_len,
        lr=lr,
        batch=batch,
        dropout=dropout,
        blocks=blocks,
        heads=heads,
        head=head,
        loss=loss,
        negatives=negatives,
        negatives_per=negatives_per,
        tied=not untied,
        seed=seed,
        from_events=from_events,
        cl_weight=cl_weight,
        cl_temperature=cl_temperature,
        fit_through=fit_through,
        threads=threads,
        exclude_history=not (from_events or data.suffix.lower() == ".csv"),  # events: repeat purchases count
    )
    best = _train_with_progress(config, seqs, resume)
    typer.echo(f"best checkpoint: {best}", err=True)
    if export_to is not None:
        _export_recommender(best, seqs, config, export_to)


def _train_with_progress(config, seqs, resume: bool) -> Path:
    """The recommender's training loop under a progress bar per epoch (loss shown as it goes)."""
    from training.recommender.train import train

    progress, _ = progress_bar("epochs", "loss")
    tasks: dict[int, int] = {}

    def update(epoch: int, step: int, total: int, loss: float) -> None:
        if epoch not in tasks:
            tasks[epoch] = progress.add_task(f"epoch {epoch + 1}", total=total, loss="-")
        progress.update(tasks[epoch], completed=step, loss=f"{loss:.3f}")

    with progress:
        return train(config, seqs, resume=resume, log=progress.console.print, progress=update)


def _export_recommender(best: Path, seqs, config, export_to: Path) -> None:
    """Export the trained model for serving, with its test figures in the manifest."""
    from training.recommender.evaluate import evaluate
    from training.recommender.export import export_recommender
    from training.recommender.model import load

    model, _ = load(best)
    test = evaluate(model, seqs, "test", exclude_history=config.exclude_history)
    metrics = {f"test_{k}": v for k, v in test.items() if k != "users"}
    manifest = export_recommender(best, export_to, metrics, command_line())
    typer.echo(f"exported {manifest.model_id} to {export_to}: {json.dumps(metrics)}", err=True)


def sequence_file(path: Path):
    """A sequence file (`user item item ...`), or an events CSV (`user_id,product_id,type,channel,timestamp`)."""
    from training.recommender.data import read_events_file, read_sequence_file

    return read_events_file(path) if path.suffix.lower() == ".csv" else read_sequence_file(path)


def events_sequences(settings: Settings):
    from training.recommender.data import from_events

    store = settings.create_store()
    try:
        products = [p.product_id for p in store.all_products()]
        return from_events(store.events(), products)
    finally:
        store.close()


def export_onnx(
    checkpoint: Annotated[
        Optional[Path],
        typer.Option(
            exists=True, dir_okay=False, help="a fine-tuned best.pt; without it, the untrained prototype model"
        ),
    ] = None,
    catalog: Annotated[
        Path, typer.Option(exists=True, help="catalogue CSV whose photos build the prototype heads")
    ] = REPO_ROOT / "samples" / "catalog.csv",
    out: Annotated[Path, typer.Option(help="model folder in the Triton repository")] = REPO_ROOT
    / "triton_models"
    / "product_embedder",
    backbone: Annotated[
        str, typer.Option(help="tf_efficientnet_lite0/1/2 (prototype model)")
    ] = "tf_efficientnet_lite0",
    queries: Annotated[Optional[Path], typer.Option(help="labelled query CSV to measure the heads on")] = REPO_ROOT
    / "samples"
    / "queries.csv",
    scale: Annotated[float, typer.Option(help="cosine head scale (prototype model)")] = 20.0,
    input_size: Annotated[
        Optional[int],
        typer.Option(
            min=32, help="serving resolution of a fine-tuned model (default: the backbone's); choose it on --split val"
        ),
    ] = None,
    crop_pct: Annotated[
        Optional[float],
        typer.Option(min=0.5, max=1.0, help="centre-crop fraction at serving (default: the backbone's)"),
    ] = None,
    coarse_from_fine: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="weight of the summed fine probabilities in coarse_probs (fine-tuned model)"
        ),
    ] = 0.0,
    gallery_weight: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="weight of the vote of the nearest training photos in both category outputs (fine-tuned model; 0 = heads alone)",
        ),
    ] = 0.0,
    gallery_k: Annotated[int, typer.Option(min=1, help="training photos that vote")] = 1,
    gallery_temperature: Annotated[
        float, typer.Option(min=1e-3, help="softmax temperature of their cosine similarities")
    ] = 0.05,
) -> None:
    """Export a product model to ONNX with its manifest (needs the train extras)."""
    queries = queries if queries and queries.exists() else None
    if checkpoint is not None:
        export_checkpoint(
            checkpoint,
            out,
            queries,
            input_size=input_size,
            crop_pct=crop_pct,
            coarse_from_fine=coarse_from_fine,
            export_command=command_line(),
            gallery_weight=gallery_weight,
            gallery_k=gallery_k,
            gallery_temperature=gallery_temperature,
        )
        return
    if (input_size, crop_pct, coarse_from_fine, gallery_weight) != (None, None, 0.0, 0.0):
        typer.echo(
            "error: --input-size, --crop-pct, --coarse-from-fine and --gallery-weight apply to a fine-tuned "
            "--checkpoint",
            err=True,
        )
        raise typer.Exit(2)
    manifest = _export_prototype(catalog, out, backbone, scale, queries)
    json.dump(manifest.metrics, sys.stdout, indent=2)
    typer.echo()


def _export_prototype(catalog: Path, out: Path, backbone: str, scale: float, queries: Path | None):
    """The untrained prototype model (heads from the catalogue's photos), measured on the sample queries."""
    try:
        from training.export import add_sample_query_metrics
        from vision.export import export_pretrained
    except ImportError as exc:
        typer.echo(f"export needs the training extras (pip install '.[train]'): {exc}", err=True)
        raise typer.Exit(2)
    manifest = export_pretrained(
        catalog, out, backbone, scale, command=command_line(), log=lambda m: typer.echo(m, err=True)
    )
    return add_sample_query_metrics(out, queries) if queries is not None else manifest
