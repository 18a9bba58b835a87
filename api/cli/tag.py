"""`seesku tag`: bulk tagging of a folder, zip or CSV of photos, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.cli.common import open_service, progress_bar
from api.settings import Settings


def tag(
    source: Annotated[
        Path, typer.Argument(exists=True, help="a folder (recursive), a .zip, or a .csv with a 'path' column")
    ],
    out: Annotated[Path, typer.Option(help="results, .csv or .jsonl; rerunning with the same OUT resumes")],
    k: Annotated[int, typer.Option(min=0, max=20, help="closest catalogue products per photo")] = 3,
    batch: Annotated[int, typer.Option(min=1, max=256)] = 32,
    workers: Annotated[
        int, typer.Option(min=0, help="processes that decode and embed; 0: one per core (ONNX Runtime)")
    ] = 0,
    duplicate_threshold: Annotated[
        float, typer.Option(min=0, max=1, help="embedding cosine for near-duplicates")
    ] = 0.90,
    layout_threshold: Annotated[float, typer.Option(min=-1, max=1, help="and layout (16x16 grey) correlation")] = 0.92,
    blur_threshold: Annotated[
        float, typer.Option(min=0, help="Laplacian variance below which a photo is blurry")
    ] = 60.0,
    objects: Annotated[
        bool, typer.Option("--objects", help="also a row per product found in each photo: its box, tags and matches")
    ] = False,
    stall_timeout: Annotated[
        float,
        typer.Option(
            min=1,
            help="seconds after which a batch the workers still hold has "
            "hung: its photo is found and reported unreadable",
        ),
    ] = 300.0,
) -> None:
    """Tag every photo: categories, closest catalogue products, near-duplicate groups, quality flags; with
    --objects, each product found in a photo gets a row of its own after the photo's (path#N in the state)."""
    from api.tagging.output import output_format
    from api.tagging.run import Tagger, TagOptions
    from api.tagging.sources import SourceError, list_items

    try:
        output_format(out)
        items = list_items(source)
    except (SourceError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    settings = Settings()
    if objects and settings.create_detector() is None:
        typer.echo(f"error: --objects needs a product detector; there is none at {settings.detector_dir}", err=True)
        raise typer.Exit(2)
    service = open_service(settings) if k else None
    matcher = service.tag_matcher() if service is not None and service.count_products() else None
    embedder = service.embedder if service else settings.create_embedder()
    detector = None
    if objects:
        detector = detector_factory(settings)
    options = TagOptions(
        k=k,
        objects=objects,
        batch=batch,
        workers=workers,
        duplicate_threshold=duplicate_threshold,
        layout_threshold=layout_threshold,
        blur_threshold=blur_threshold,
        stall_timeout_s=stall_timeout,
    )
    tagger = Tagger(embedder, matcher, options, settings.limits(), detector_factory=detector)
    progress, update = progress_bar("tagging")
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
        f"at {summary.rate:.1f} photos/s; {summary.duplicate_groups} near-duplicate groups; results in {out}",
        err=True,
    )


def detector_factory(settings: Settings):
    """The detector each tagging worker builds for itself, in-process and on one thread (a worker per core):
    the int8 graph on OpenVINO, unpinned as the embedder's workers are; an fp32 one on ONNX Runtime."""
    from functools import partial

    from vision.detection import DetectorManifest

    if DetectorManifest.load(settings.detector_dir).precision == "int8":
        from vision.runtimes.openvino import OpenVinoDetector

        return partial(OpenVinoDetector, settings.detector_dir, threads=1, pinned=False)
    from vision.runtimes.onnx import OnnxDetector

    return partial(OnnxDetector, settings.detector_dir, threads=1)
