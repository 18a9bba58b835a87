"""`seesku quantize`: an int8 model folder from an exported fp32 one, gated on val (the train extras)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from api.cli.common import command_line
from api.settings import REPO_ROOT

MODELS = REPO_ROOT / "triton_models"


def quantize(
    data: Annotated[Path, typer.Option(exists=True, help="the training data: calibration from train, gate on val")],
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="the fp32 model folder")] = MODELS
    / "product_embedder",
    out: Annotated[Path, typer.Option(help="the int8 model folder to write")] = MODELS / "product_embedder_int8",
    calibration: Annotated[int, typer.Option(min=1, help="training photos to calibrate on")] = 300,
    seed: Annotated[int, typer.Option(help="seed of the calibration draw")] = 0,
    max_drop: Annotated[float, typer.Option(min=0, help="allowed fine/coarse top-1 drop on val (fraction)")] = 0.005,
    max_r1_drop: Annotated[float, typer.Option(min=0, help="allowed photo-to-catalogue R@1 drop on val")] = 0.01,
    min_cosine: Annotated[
        float, typer.Option(min=0, max=1, help="least mean cosine of int8 with fp32 embeddings on val")
    ] = 0.99,
) -> None:
    """Quantize the served graph to int8 with NNCF on training photos; write it only if val says it kept its
    accuracy (the manifest records the calibration photos, both precisions' val figures and the command)."""
    try:
        from training.quantize import GateFailed
        from training.quantize import quantize as run
    except ImportError as error:
        typer.echo(f"error: seesku quantize needs the train extras (pip install 'seesku[train]'): {error}", err=True)
        raise typer.Exit(1) from None
    try:
        # NNCF draws its progress on stdout: send it to stderr, so that stdout carries the JSON answer alone.
        with contextlib.redirect_stdout(sys.stderr):
            manifest = run(
                model,
                data,
                out,
                calibration,
                seed,
                max_drop,
                max_r1_drop,
                min_cosine,
                command_line(),
                log=lambda m: typer.echo(m, err=True),
            )
    except (GateFailed, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"out": str(out), "served_id": manifest.served_id, **manifest.quantization.model_dump()}))
