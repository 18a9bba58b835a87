"""The `seesku` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from api.settings import REPO_ROOT, Settings

app = typer.Typer(help="seesku: visual product recognition.", no_args_is_help=True, add_completion=False)
catalog_app = typer.Typer(help="Import and export the catalogue in the data dir.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
train_app = typer.Typer(help="Train models (needs the train extras: make test installs them).", no_args_is_help=True)
app.add_typer(train_app, name="train")
keys_app = typer.Typer(help="API keys (hashed at rest) with scopes: search, catalog:write, admin.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
triton_app = typer.Typer(help="A local Triton Inference Server on CPU (needs `make triton`).", no_args_is_help=True)
app.add_typer(triton_app, name="triton")
eval_app = typer.Typer(help="Evaluate models (needs the train extras: make test installs them).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _progress(description: str):
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=Console(stderr=True),  # stdout stays clean for JSON
    )
    task = progress.add_task(description, total=None)
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


def _service(settings: Settings):
    from api.catalog.service import CatalogService

    service = CatalogService(settings)
    progress, update = _progress("re-embedding")
    with progress:
        service.open(progress=update)
    return service


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="listen address (SEESKU_HOST)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (SEESKU_PORT)")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP service."""
    import uvicorn

    from api.logs import configure_logging

    # The app factory reads its settings from the environment: pass --host/--port on, so that keys are
    # required when the server really listens beyond loopback, whichever way the address was given.
    if host:
        os.environ["SEESKU_HOST"] = host
    if port:
        os.environ["SEESKU_PORT"] = str(port)
    settings = Settings()
    configure_logging()
    # seesku's own access log (JSON, request ids, no query strings or secrets) replaces uvicorn's.
    uvicorn.run(
        "api.app:create_app", factory=True, host=host or settings.host, port=port or settings.port,
        workers=workers, log_level="info", log_config=None, access_log=False,
    )


@catalog_app.command("import")
def catalog_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="catalogue CSV; photo paths relative to it")],
) -> None:
    """Add or update the products of a CSV (product_id, name, fine_category, coarse_category, description, images)."""
    service = _service(Settings())
    try:
        progress, update = _progress("importing")
        with progress:
            count = service.import_csv(file, progress=update)
        typer.echo(f"imported {count} products; catalogue has {service.store.count_products()} products, "
                   f"{len(service.index)} photos indexed")
    finally:
        service.close()


@catalog_app.command("export")
def catalog_export(out: Annotated[Path, typer.Argument(file_okay=False, help="folder for catalog.csv and photos")]) -> None:
    """Write the catalogue as catalog.csv plus its photos (the import format)."""
    service = _service(Settings())
    try:
        count = service.export_catalog(out)
        typer.echo(f"exported {count} products to {out / 'catalog.csv'}")
    finally:
        service.close()


@app.command()
def search(
    photo: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    k: Annotated[int, typer.Option(min=1, max=100)] = 10,
    category: Annotated[Optional[str], typer.Option(help="fine or coarse category filter")] = None,
) -> None:
    """Search the catalogue in the data dir with a photo; prints the API's JSON answer."""
    from api.routers.search import search_answer
    from api.schemas import Channel

    settings = Settings()
    service = _service(settings)
    try:
        result = service.search(photo.read_bytes(), k, category)
        typer.echo(json.dumps(search_answer(result, service, Channel.batch), indent=2))
    finally:
        service.close()


@app.command("export-onnx")
def export_onnx(
    checkpoint: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="a fine-tuned best.pt; without it, the untrained prototype model")] = None,
    catalog: Annotated[Path, typer.Option(exists=True, help="catalogue CSV whose photos build the prototype heads")] = REPO_ROOT / "samples" / "catalog.csv",
    out: Annotated[Path, typer.Option(help="model folder in the Triton repository")] = REPO_ROOT / "triton_models" / "product_embedder",
    backbone: Annotated[str, typer.Option(help="tf_efficientnet_lite0/1/2 (prototype model)")] = "tf_efficientnet_lite0",
    queries: Annotated[Optional[Path], typer.Option(help="labelled query CSV to measure the heads on")] = REPO_ROOT / "samples" / "queries.csv",
    scale: Annotated[float, typer.Option(help="cosine head scale (prototype model)")] = 20.0,
    input_size: Annotated[Optional[int], typer.Option(min=32, help="serving resolution of a fine-tuned model (default: the backbone's); choose it on --split val")] = None,
    crop_pct: Annotated[Optional[float], typer.Option(min=0.5, max=1.0, help="centre-crop fraction at serving (default: the backbone's)")] = None,
    coarse_from_fine: Annotated[float, typer.Option(min=0.0, max=1.0, help="weight of the summed fine probabilities in coarse_probs (fine-tuned model)")] = 0.0,
    gallery_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="weight of the vote of the nearest training photos in both category outputs (fine-tuned model; 0 = heads alone)")] = 0.0,
    gallery_k: Annotated[int, typer.Option(min=1, help="training photos that vote")] = 1,
    gallery_temperature: Annotated[float, typer.Option(min=1e-3, help="softmax temperature of their cosine similarities")] = 0.05,
) -> None:
    """Export a product model to ONNX with its manifest (needs the train extras)."""
    queries = queries if queries and queries.exists() else None
    if checkpoint is not None:
        _export_checkpoint(checkpoint, out, queries, input_size=input_size, crop_pct=crop_pct,
                           coarse_from_fine=coarse_from_fine, export_command=_command_line(),
                           gallery_weight=gallery_weight, gallery_k=gallery_k, gallery_temperature=gallery_temperature)
        return
    if (input_size, crop_pct, coarse_from_fine, gallery_weight) != (None, None, 0.0, 0.0):
        typer.echo("error: --input-size, --crop-pct, --coarse-from-fine and --gallery-weight apply to a fine-tuned --checkpoint", err=True)
        raise typer.Exit(2)
    try:
        from vision.export import export_pretrained
    except ImportError as exc:
        typer.echo(f"export needs the training extras (pip install '.[train]'): {exc}", err=True)
        raise typer.Exit(2)
    manifest = export_pretrained(
        catalog, out, backbone, scale, queries, command=_command_line(), log=lambda m: typer.echo(m, err=True),
    )
    json.dump(manifest.metrics, sys.stdout, indent=2)
    typer.echo()


@app.command()
def tag(
    source: Annotated[Path, typer.Argument(exists=True, help="a folder (recursive), a .zip, or a .csv with a 'path' column")],
    out: Annotated[Path, typer.Option(help="results, .csv or .jsonl; rerunning with the same OUT resumes")],
    k: Annotated[int, typer.Option(min=0, max=20, help="closest catalogue products per photo")] = 3,
    batch: Annotated[int, typer.Option(min=1, max=256)] = 32,
    workers: Annotated[int, typer.Option(min=0, help="processes that decode and embed; 0: one per core (ONNX Runtime)")] = 0,
    duplicate_threshold: Annotated[float, typer.Option(min=0, max=1, help="embedding cosine for near-duplicates")] = 0.90,
    layout_threshold: Annotated[float, typer.Option(min=-1, max=1, help="and layout (16x16 grey) correlation")] = 0.92,
    blur_threshold: Annotated[float, typer.Option(min=0, help="Laplacian variance below which a photo is blurry")] = 60.0,
    stall_timeout: Annotated[float, typer.Option(min=1, help="seconds after which a batch the workers still hold has "
                                                 "hung: its photo is found and reported unreadable")] = 300.0,
) -> None:
    """Tag every photo: categories, closest catalogue products, near-duplicate groups, quality flags."""
    from api.tagging.engine import TagOptions, Tagger, output_format
    from api.tagging.sources import SourceError, list_items

    try:
        output_format(out)
        items = list_items(source)
    except (SourceError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    settings = Settings()
    service = _service(settings) if k else None
    matcher = None
    if service is not None and service.store.count_products():
        matcher = service.catalogue_matches
    from vision.preprocess import Limits
    from api.catalog.service import create_service_embedder

    embedder = service.embedder if service else create_service_embedder(settings)
    options = TagOptions(k=k, batch=batch, workers=workers, duplicate_threshold=duplicate_threshold,
                         layout_threshold=layout_threshold, blur_threshold=blur_threshold, stall_timeout_s=stall_timeout)
    tagger = Tagger(embedder, matcher, options,
                    Limits(settings.max_upload_bytes, settings.max_image_pixels))
    progress, update = _progress("tagging")
    try:
        with progress:
            summary = tagger.run(items, out, progress=update, source=str(source.resolve()))
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {out} holds the photos tagged so far; run the same command again to resume", err=True)
        raise typer.Exit(130)
    finally:
        if service is not None:
            service.close()
    typer.echo(
        f"tagged {summary.tagged_now} photos now ({summary.done}/{summary.total} done, {summary.unreadable} unreadable) "
        f"at {summary.rate:.1f} photos/s; {summary.duplicate_groups} near-duplicate groups; results in {out}", err=True)


def _key_store():
    from api.security import KeyStore

    return KeyStore(Settings().data_dir / "keys.sqlite3")


@keys_app.command("create")
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
    typer.echo(f"created key {key.key_id} ({name}) with scopes {' '.join(key.scopes)}; keep the secret, it is not shown again:", err=True)
    typer.echo(token)


@keys_app.command("list")
def keys_list() -> None:
    """Keys with their scopes and state (never their secrets)."""
    store = _key_store()
    try:
        for key in store.list():
            state = "revoked" if key.revoked else "active"
            typer.echo(f"{key.key_id}  {state:7s}  {' '.join(key.scopes):28s}  {key.name}")
    finally:
        store.close()


@keys_app.command("revoke")
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


def _command_line() -> str:
    return " ".join(["seesku", *sys.argv[1:]])


THREADS_HELP = "PyTorch threads; 0 = every core (lower it to share the machine with another job)"


@train_app.command("vision")
def train_vision(
    data: Annotated[Path, typer.Option(exists=True, help="Grocery Store root, a folder per product, or a CSV of path,product_id,fine,coarse")],
    out: Annotated[Path, typer.Option(help="run folder: checkpoints, history, exported model")],
    backbone: Annotated[str, typer.Option(help="tf_efficientnet_lite0/1/2")] = "tf_efficientnet_lite0",
    epochs: Annotated[int, typer.Option(min=1)] = 15,
    sizes: Annotated[str, typer.Option(help="training resolutions, one per equal share of the epochs")] = "160,192,224",
    freeze_blocks: Annotated[int, typer.Option(min=0, help="backbone blocks kept frozen after the stem")] = 2,
    lr: Annotated[float, typer.Option(help="peak learning rate of the heads; the backbone gets lr x backbone-lr-mult")] = 2e-3,
    backbone_lr_mult: Annotated[float, typer.Option()] = 0.2,
    seed: Annotated[int, typer.Option()] = 0,
    max_steps_per_epoch: Annotated[int, typer.Option(help="0: full epochs")] = 0,
    threads: Annotated[int, typer.Option(min=0, help=THREADS_HELP)] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/last.pt")] = False,
    export: Annotated[bool, typer.Option(help="export the best checkpoint to OUT/product_embedder when done")] = True,
    fit_through: Annotated[Literal["train", "val"], typer.Option(help="train: keep the epoch with the best val fine top-1; val: the final fit, on train + val for exactly --epochs (choose the recipe with train first)")] = "train",
) -> None:
    """Fine-tune the product model; a checkpoint every epoch, the best one (validation fine top-1) exported."""
    from training.progress import TrainProgress
    from training.vision import TrainConfig, train

    config = TrainConfig(
        data=str(data), out=str(out), backbone=backbone, epochs=epochs,
        sizes=[int(s) for s in sizes.split(",")], freeze_blocks=freeze_blocks, lr=lr,
        backbone_lr_mult=backbone_lr_mult, seed=seed, max_steps_per_epoch=max_steps_per_epoch, threads=threads,
        fit_through=fit_through,
    )
    with TrainProgress() as ui:
        best = train(config, resume=resume, ui=ui)
    typer.echo(f"best checkpoint: {best}", err=True)
    if export:
        queries = REPO_ROOT / "samples" / "queries.csv"
        _export_checkpoint(best, out / "product_embedder", queries if queries.exists() else None)


def _export_checkpoint(checkpoint: Path, out: Path, queries: Path | None, **options) -> None:
    from training.export import export_trained

    manifest = export_trained(checkpoint, out, queries_csv=queries, log=lambda m: typer.echo(m, err=True), **options)
    typer.echo(f"exported {manifest.model_id} to {out}", err=True)
    json.dump(manifest.metrics, sys.stdout, indent=2)
    typer.echo()


@eval_app.command("vision")
def eval_vision(
    data: Annotated[Path, typer.Option(exists=True, help="Grocery Store root, a product folder or a CSV")],
    split: Annotated[str, typer.Option(help="train, val or test")] = "val",
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="exported model folder (manifest.json + ONNX)")] = REPO_ROOT / "triton_models" / "product_embedder",
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON on stdout")] = False,
    out: Annotated[Path, typer.Option(help="folder for results JSON, per-class CSV and confusion matrix PNG")] = REPO_ROOT / "training" / "reports",
    report: Annotated[Optional[Path], typer.Option(help="report to (re)write from every result in OUT; default OUT/<dataset>.md")] = None,
    name: Annotated[Optional[str], typer.Option(help="label of this model in the report; default its model_id")] = None,
) -> None:
    """Evaluate an exported model on a split through the service's own preprocess and runtime."""
    from training.evaluate import evaluate, write_report

    try:
        result = evaluate(model, data, split, out, name=name, log=lambda m: typer.echo(m, err=True))
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


@train_app.command("recommender")
def train_recommender(
    out: Annotated[Path, typer.Option(help="run folder: checkpoints and history")],
    data: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="sequence file (one user a line, items in time order) or events CSV")] = None,
    from_events: Annotated[bool, typer.Option("--from-events", help="train on the events stored in the data dir")] = False,
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    dim: Annotated[int, typer.Option(min=8)] = 64,
    max_len: Annotated[int, typer.Option(min=2)] = 50,
    lr: Annotated[float, typer.Option()] = 1e-3,
    batch: Annotated[int, typer.Option(min=1, help="users per step")] = 256,
    dropout: Annotated[float, typer.Option(min=0, max=0.9)] = 0.3,
    seed: Annotated[int, typer.Option()] = 0,
    cl_weight: Annotated[float, typer.Option(min=0, help="weight of the contrastive regulariser (0 = off)")] = 0.0,
    cl_temperature: Annotated[float, typer.Option(min=0.01)] = 1.0,
    fit_through: Annotated[Literal["train", "val"], typer.Option(help="train: hold out the validation item and stop on it; val: refit through it for exactly --epochs")] = "train",
    threads: Annotated[int, typer.Option(min=0, help=THREADS_HELP)] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/last.pt")] = False,
    export_to: Annotated[Optional[Path], typer.Option(help="export the best model (ONNX + manifest) to this folder, e.g. triton_models/user_recommender")] = None,
) -> None:
    """Train the self-attention recommender (full softmax cross-entropy, early stopping on validation NDCG@10)."""
    from training.recommender.train import RecommenderConfig, train

    if (data is None) == (not from_events):
        typer.echo("error: pass exactly one of --data FILE or --from-events", err=True)
        raise typer.Exit(2)
    seqs = _events_sequences(Settings()) if from_events else _sequence_file(data)
    config = RecommenderConfig(
        data=str(data or "events"), out=str(out), epochs=epochs, dim=dim, max_len=max_len, lr=lr, batch=batch, dropout=dropout,
        seed=seed, from_events=from_events, cl_weight=cl_weight, cl_temperature=cl_temperature, fit_through=fit_through, threads=threads,
        exclude_history=not (from_events or data.suffix.lower() == ".csv"),  # events: repeat purchases count
    )
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=Console(stderr=True))
    tasks: dict[int, int] = {}

    def update(epoch: int, step: int, total: int, loss: float) -> None:
        if epoch not in tasks:
            tasks[epoch] = progress.add_task(f"epoch {epoch + 1}", total=total, loss="-")
        progress.update(tasks[epoch], completed=step, loss=f"{loss:.3f}")

    with progress:
        best = train(config, seqs, resume=resume, log=progress.console.print, progress=update)
    typer.echo(f"best checkpoint: {best}", err=True)
    if export_to is not None:
        from training.recommender.export import export_recommender
        from training.recommender.train import evaluate, load

        model, _ = load(best)
        metrics = {f"test_{k}": v for k, v in evaluate(model, seqs, "test", exclude_history=config.exclude_history).items() if k != "users"}
        manifest = export_recommender(best, export_to, metrics, _command_line())
        typer.echo(f"exported {manifest.model_id} to {export_to}: {json.dumps(metrics)}", err=True)


def _sequence_file(path: Path):
    """A sequence file (`user item item ...`), or an events CSV (`user_id,product_id,type,channel,timestamp`)."""
    from training.recommender.data import from_events, read_events_csv, read_sequence_file

    if path.suffix.lower() == ".csv":
        return from_events([e[:4] for e in read_events_csv(path)])
    return read_sequence_file(path)


def _events_sequences(settings: Settings):
    from api.catalog.store import CatalogStore
    from training.recommender.data import from_events

    store = CatalogStore(settings.data_dir / "catalog.sqlite3")
    try:
        products = [p.product_id for p in store.all_products()]
        return from_events(store.event_rows(), products)
    finally:
        store.close()


@eval_app.command("recommender")
def eval_recommender(
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="the sequence file the model was trained on")],
    model: Annotated[list[Path], typer.Option(exists=True, dir_okay=False,
                                              help="a best.pt checkpoint; repeat it to score an ensemble (mean log-probability)")],
    split: Annotated[str, typer.Option(help="val or test")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON on stdout")] = False,
    out: Annotated[Optional[Path], typer.Option(help="also write the result JSON here")] = None,
) -> None:
    """Leave-one-out evaluation, full ranking against every item: HR@5/10/20 and NDCG@5/10/20."""
    import time

    from training.recommender.train import Ensemble, evaluate, load

    loaded = [load(path) for path in model]
    configs = [state["config"] for _, state in loaded]
    refits = {config.get("fit_through") == "val" for config in configs}
    if len(refits) > 1:
        typer.echo("error: an ensemble mixes refits with held-out models; give it models trained alike", err=True)
        raise typer.Exit(2)
    refit = refits.pop()
    if split == "val" and refit:
        typer.echo(f"error: {model[0]} is a refit trained through the validation item; evaluate it on test", err=True)
        raise typer.Exit(2)
    excludes = {config.get("exclude_history", True) for config in configs}
    if len(excludes) > 1:
        typer.echo("error: ensemble members disagree on excluding the history from the answers", err=True)
        raise typer.Exit(2)
    exclude = excludes.pop()
    try:
        recommender = loaded[0][0] if len(loaded) == 1 else Ensemble([m for m, _ in loaded])
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    started = time.perf_counter()
    metrics = evaluate(recommender, _sequence_file(data), split, exclude_history=exclude)

    def describe(path: Path, state: dict) -> dict:
        history_file = path.parent / "history.json"
        return {
            "model": str(path), "best_epoch": state["epoch"] + 1,
            "train_wall_s": json.loads(history_file.read_text())["wall_s"] if history_file.exists() else None,
            "train_command": _recommender_command(state["config"]),
        }

    members = [describe(path, state) for path, (_, state) in zip(model, loaded)]
    result = {"data": str(data), "split": split, **members[0], "metrics": metrics,
              "eval_s": round(time.perf_counter() - started, 1)}
    if len(members) > 1:
        result.update(model=[m["model"] for m in members], ensemble=members,
                      best_epoch=[m["best_epoch"] for m in members],
                      train_wall_s=sum(m["train_wall_s"] or 0.0 for m in members),
                      train_command=[m["train_command"] for m in members])
    result["protocol"] = ("leave-one-out; target ranked against all items" + ("; items already in the history excluded" if exclude else "")
                          + ("; refit: trained through the validation item" if refit else "")
                          + (f"; ensemble of {len(members)}: mean log-softmax" if len(members) > 1 else ""))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for key, value in metrics.items():
            typer.echo(f"{key:10s} {value:.4f}")


def _recommender_command(config: dict) -> str:
    """The `seesku train recommender` line that reproduces a checkpoint's config."""
    command = ("seesku train recommender --data {data} --out {out} --epochs {epochs} --dim {dim} --max-len {max_len} "
               "--lr {lr:g} --batch {batch} --dropout {dropout:g} --seed {seed}").format(**config)
    if config.get("cl_weight"):
        command += " --cl-weight {cl_weight:g} --cl-temperature {cl_temperature:g}".format(**config)
    if config.get("fit_through", "train") != "train":
        command += f" --fit-through {config['fit_through']}"
    return command


@triton_app.command("serve")
def triton_serve(
    grpc_port: Annotated[int, typer.Option(help="gRPC port: point the API at it with SEESKU_INFERENCE=triton://HOST:PORT")] = 8001,
    http_port: Annotated[int, typer.Option(help="HTTP port (health, metadata)")] = 8002,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port")] = 8003,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    model_dir: Annotated[Optional[Path], typer.Option(help="exported embedder (manifest.json + graph); the shipped one by default")] = None,
    workdir: Annotated[Path, typer.Option(help="where the prepared model repository and backends go")] = Path("data/triton"),
) -> None:
    """Start the real `tritonserver` (python backend, CPU) with the model repository prepared for it."""
    import signal

    from triton_models.server import TritonNotInstalled, TritonServer

    console = Console(stderr=True)
    server = TritonServer(workdir.resolve(), grpc_port, http_port, metrics_port, model_dir, host=host, inherit_output=True)
    try:
        server.prepare()
        console.print(f"starting tritonserver: models in {workdir / 'models'}", soft_wrap=True)
        server.start()
    except (TritonNotInstalled, RuntimeError, TimeoutError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]Triton ready[/green]: gRPC {server.grpc_url}, HTTP {host}:{http_port}", soft_wrap=True)
    console.print(f"run the API on it: SEESKU_INFERENCE={server.inference_setting} seesku serve", soft_wrap=True)
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        code = server.process.wait()
    except KeyboardInterrupt:
        server.stop()
        code = 0
    # Stopped by us (SIGTERM passed on) is a clean exit; anything else is the server's own failure.
    raise typer.Exit(0 if code in (0, -signal.SIGTERM) else code)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
