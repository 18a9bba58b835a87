"""Export a fine-tuned checkpoint to the Triton model repository layout (graph + manifest)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.data import load_photos
from training.metrics import topk_accuracy
from training.vision import TrainConfig, load_checkpoint
from vision.backbones import REGISTRY
from vision.export import embed_paths, write_model
from vision.manifest import INPUT_NAME, OUTPUT_NAMES, GalleryConfig, InputConfig, ModelManifest
from vision.preprocess import load_image
from vision.runtimes.onnx import onnx_session


def export_trained(
    checkpoint: Path,
    out_dir: Path,
    data: Path | None = None,
    queries_csv: Path | None = None,
    log: Callable[[str], None] = print,
    input_size: int | None = None,
    crop_pct: float | None = None,
    coarse_from_fine: float = 0.0,
    export_command: str | None = None,
    gallery_weight: float = 0.0,
    gallery_k: int = 1,
    gallery_temperature: float = 0.05,
) -> ModelManifest:
    """Write `out_dir/1/model.onnx` + `manifest.json` for a `best.pt`, with its validation figures, the
    exact training command and a checksum of the training data.

    `input_size`/`crop_pct` override the backbone's serving input (default: its pretrained config). A model
    trained on random-resized crops sees products larger than a centre crop of the same size shows them,
    so serving it at a somewhat higher resolution than it was trained at often classifies better (Touvron
    et al., FixRes, 2019); choose it with `seesku eval vision --split val`. `coarse_from_fine`: see
    `ProductModel.set_hierarchy`. The manifest's `val_*` metrics stay those of training (training resolution,
    coarse head alone); `seesku eval vision` measures the exported graph as served. `gallery_weight` > 0 bakes
    the training photos into the graph as reference photos: see `ProductModel.set_gallery`; only the split(s)
    the model was trained on are used (train, or train + val for a final fit), so held-out photos stay unseen. `export_command` (the export's own command line) is appended to the
    training command in the manifest, so the served graph can be reproduced from it."""
    model, state = load_checkpoint(checkpoint)
    config = TrainConfig(**state["config"])
    cfg = REGISTRY[config.backbone]
    model.input_size = input_size or cfg.input_size
    model.set_hierarchy(state["fine_to_coarse"], coarse_from_fine)
    heads = (
        f"trained cosine heads (scale {config.head_scale:g}) on a {config.embedding_dim}-d projection; "
        "cross-entropy + SupCon, see training/vision.py"
    )
    if coarse_from_fine > 0:
        heads += f"; coarse_probs = {1 - coarse_from_fine:g} x coarse head + {coarse_from_fine:g} x fine_probs summed per coarse category"
    data = Path(data or config.data)
    train_set = load_photos(data, config.training_split)
    serving_input = InputConfig(size=model.input_size, crop_pct=crop_pct or cfg.crop_pct, mean=cfg.mean, std=cfg.std)
    gallery = None
    if gallery_weight > 0:
        log(f"embedding the {len(train_set)} training photos as the reference gallery")
        gallery = _bake_gallery(
            model,
            state,
            train_set,
            serving_input,
            config.training_split,
            gallery_k,
            gallery_temperature,
            gallery_weight,
        )
        heads += (
            f"; then fine_probs and coarse_probs = {1 - gallery_weight:g} x those + {gallery_weight:g} x the vote of "
            f"the {model.gallery_k} nearest of the {len(train_set)} training photos (softmax of cosine / "
            f"{gallery_temperature:g})"
        )
    log("checksumming the training data")
    metrics = _training_metrics(state["history"])
    manifest = _manifest(config, model, state, train_set, heads, serving_input, metrics, gallery, export_command)
    check = [p.path for p in train_set.photos[:: max(1, len(train_set) // 32)]][:32]
    manifest = write_model(model, manifest, out_dir, check, log)
    return add_sample_query_metrics(out_dir, queries_csv) if queries_csv else manifest


def _manifest(
    config: TrainConfig,
    model,
    state: dict,
    train_set,
    heads: str,
    serving_input: InputConfig,
    metrics: dict[str, float],
    gallery: GalleryConfig | None,
    export_command: str | None,
) -> ModelManifest:
    """What the exported graph is: provenance, input, labels, training record and the reproduce command."""
    cfg = REGISTRY[config.backbone]
    return ModelManifest(
        model_id=f"seesku-{config.backbone.replace('tf_', '').replace('_', '-')}-ft",
        version="",  # set by write_model: the graph's checksum
        backbone=config.backbone,
        source_weights=f"{cfg.source} (ImageNet-1k), fine-tuned on {train_set.source} "
        f"({len(train_set)} photos + {len(train_set.iconic)} catalogue photos)",
        heads=heads,
        input=serving_input,
        embedding_dim=model.embedding_dim,
        fine_labels=state["fine_labels"],
        coarse_labels=state["coarse_labels"],
        fine_to_coarse=state["fine_to_coarse"],
        metrics=metrics,
        command=" && ".join(filter(None, [state.get("command") or _train_command(config), export_command])),
        data_checksum=train_set.checksum(),
        training=state["history"],
        gallery=gallery,
        trained_on=train_set.source,
    )


def _bake_gallery(
    model, state: dict, train_set, serving_input: InputConfig, split: str, k: int, temperature: float, weight: float
) -> GalleryConfig:
    """The training photos as the graph's voting reference photos (`ProductModel.set_gallery`)."""
    model.eval()
    reference = embed_paths(model, [p.path for p in train_set.photos], serving_input.spec())
    position = {name: i for i, name in enumerate(state["fine_labels"])}
    labels = [position[train_set.fine_labels[p.fine]] for p in train_set.photos]
    model.set_gallery(reference, labels, k, temperature, weight)
    return GalleryConfig(split=split, photos=len(labels), k=model.gallery_k, temperature=temperature, weight=weight)


def _training_metrics(history: list[dict]) -> dict[str, float]:
    """The manifest's training figures: the best epoch's validation metrics (the last epoch's without val)."""
    validated = [r for r in history if "val_fine_top1" in r]
    best = max(validated, key=lambda r: r["val_fine_top1"]) if validated else history[-1]
    metrics = {k: float(v) for k, v in best.items() if k.startswith("val_")}
    metrics["best_epoch"] = float(best["epoch"])
    metrics["train_wall_s"] = float(sum(r["seconds"] for r in history))
    return metrics


def add_sample_query_metrics(model_dir: Path, queries_csv: Path) -> ModelManifest:
    """Measure an exported model's heads on labelled query photos (the sample queries: val photos, never
    test) and add the figures to its manifest."""
    manifest = ModelManifest.load(model_dir)
    metrics = sample_query_metrics(model_dir, manifest, queries_csv)
    manifest = manifest.model_copy(update={"metrics": {**manifest.metrics, **metrics}})
    manifest.save(model_dir)
    return manifest


def sample_query_metrics(model_dir: Path, manifest: ModelManifest, queries_csv: Path) -> dict[str, float]:
    fine_labels, coarse_labels = manifest.fine_labels, manifest.coarse_labels
    with open(queries_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["fine_category"] in fine_labels]
    if not rows:
        return {}
    spec = manifest.input.spec()
    pixels = np.stack([load_image((queries_csv.parent / r["image"]).read_bytes(), spec) for r in rows])
    _, fine, coarse = onnx_session(model_dir / manifest.onnx_file).run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
    fine_t = np.array([fine_labels.index(r["fine_category"]) for r in rows])
    coarse_t = np.array([coarse_labels.index(r["coarse_category"]) for r in rows])
    return {
        "sample_queries": float(len(rows)),
        "sample_queries_fine_top1": topk_accuracy(fine, fine_t, 1),
        "sample_queries_fine_top5": topk_accuracy(fine, fine_t, 5),
        "sample_queries_coarse_top1": topk_accuracy(coarse, coarse_t, 1),
    }


def _train_command(config: TrainConfig) -> str:
    return (
        f"seesku train vision --data {config.data} --out {config.out} --backbone {config.backbone} "
        f"--epochs {config.epochs} --sizes {','.join(map(str, config.sizes))} --freeze-blocks {config.freeze_blocks} "
        f"--lr {config.lr:g} --backbone-lr-mult {config.backbone_lr_mult:g} --seed {config.seed}"
        + (f" --channel-p {config.channel_p:g}" if config.channel_p else "")
        + (f" --consistency {config.consistency_weight:g}" if config.consistency_weight else "")
        + (f" --init {config.init}" if config.init else "")
        + (f" --fit-through {config.fit_through}" if config.fit_through != "train" else "")
    )
