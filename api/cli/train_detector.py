"""`seesku train detector`, `seesku export-detector` and `seesku quantize-detector`: the product detector that
finds each product of a multi-product photo (train extras)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.cli.common import THREADS_HELP, command_line
from api.settings import REPO_ROOT


def train_detector(
    data: Annotated[Path, typer.Option(exists=True, help="Grocery Store root, a folder per product, or a CSV")],
    out: Annotated[Path, typer.Option(help="run folder: checkpoints and history")],
    epochs: Annotated[int, typer.Option(min=1)] = 6,
    steps_per_epoch: Annotated[int, typer.Option(min=1, help="batches of composed scenes per epoch")] = 250,
    batch: Annotated[int, typer.Option(min=2)] = 16,
    input_size: Annotated[int, typer.Option(min=64, help="the detector's input side (a multiple of 32)")] = 256,
    lr: Annotated[float, typer.Option()] = 2e-3,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[int, typer.Option(min=0, help=THREADS_HELP)] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/last.pt")] = False,
    export_to: Annotated[Path, typer.Option(help="model folder the best checkpoint is exported to")] = REPO_ROOT
    / "triton_models"
    / "product_detector",
    export: Annotated[bool, typer.Option(help="export the best checkpoint when done")] = True,
) -> None:
    """Train the detector on scenes composed from the train split's photos (val scenes pick the best epoch)."""
    from training.detection.export import export_detector
    from training.detection.train import DetectorConfig, train_detector
    from training.progress import TrainProgress

    if input_size % 32:
        raise typer.BadParameter("--input-size must be a multiple of 32")
    config = DetectorConfig(
        data=str(data),
        out=str(out),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch=batch,
        input_size=input_size,
        lr=lr,
        seed=seed,
        threads=threads,
    )
    try:
        with TrainProgress() as ui:
            best = train_detector(config, resume=resume, ui=ui)
    except (FileNotFoundError, ValueError) as exc:  # no checkpoint to resume, another run's, an empty split
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"best checkpoint: {best}", err=True)
    if export:
        manifest = export_detector(best, export_to, command_line(), log=lambda m: typer.echo(m, err=True))
        typer.echo(f"exported {manifest.served_id} to {export_to}", err=True)


def export_detector(
    checkpoint: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="a best.pt or last.pt of a run")],
    out: Annotated[Path, typer.Option(help="model folder to write")] = REPO_ROOT / "triton_models" / "product_detector",
) -> None:
    """Export a detector checkpoint (graph + manifest, checked against torch, measured on val scenes)."""
    from training.detection.export import export_detector as export

    manifest = export(checkpoint, out, command_line(), log=lambda m: typer.echo(m, err=True))
    typer.echo(f"exported {manifest.served_id} to {out}: {manifest.metrics}", err=True)


def quantize_detector(
    data: Annotated[Path, typer.Option(exists=True, help="the training data: calibration from train, gate on val")],
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="the fp32 detector folder")] = REPO_ROOT
    / "triton_models"
    / "product_detector",
    out: Annotated[Path, typer.Option(help="the int8 detector folder to write")] = REPO_ROOT
    / "triton_models"
    / "product_detector_int8",
    calibration: Annotated[int, typer.Option(min=1, help="scenes of train photos to calibrate on")] = 300,
    scenes: Annotated[int, typer.Option(min=1, help="scenes of val photos for the gate")] = 200,
) -> None:
    """Quantize the detector to int8 with NNCF on scenes of train photos; write it only if val scenes say it kept
    its boxes (the manifest records the calibration, both precisions' figures and the gate)."""
    import contextlib
    import sys

    from training.detection.quantize import GateFailed
    from training.detection.quantize import quantize_detector as run

    try:
        with contextlib.redirect_stdout(sys.stderr):  # NNCF draws its progress on stdout
            manifest = run(
                model, data, out, calibration, scenes, command=command_line(), log=lambda m: typer.echo(m, err=True)
            )
    except (GateFailed, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {manifest.served_id} to {out}: {manifest.quantization['gate']}", err=True)
