"""Fine-tune the product model on labelled photos (`seesku train vision`).

Losses, on every batch:
- cross-entropy (label smoothing 0.1) on the fine cosine head, and on the coarse head at half weight;
- supervised contrastive loss (SupCon, Khosla et al. 2020) on the L2-normalised embedding. Why SupCon:
  the served embedding is searched against *catalogue* photos, so what matters is that a shopper photo
  lands next to its product's catalogue photo. Each batch is P products x K shopper photos plus each
  product's iconic (catalogue) photo, so SupCon pulls every shopper photo towards the catalogue photo and
  the other photos of its product, and pushes it from the other products in the batch, using every
  positive pair instead of one triplet. The cosine heads are themselves class proxies; SupCon adds the
  pairwise photo-to-catalogue structure the proxies do not see.

Making it practical on two CPU cores (measured with lite0, batch 32, see the report):
- every photo is decoded once into a uint8 cache (`runs/cache/`), so an epoch never touches JPEG;
- the stem and first blocks are frozen (their BN statistics too): 224 px trains 2x faster (16 -> 32 img/s);
- progressive resolution (FixRes-style): early epochs at 160 px (3x faster than 224), the last at the
  served 224 px;
- channels-last tensors.

A checkpoint is written atomically after every epoch (`last.pt`, and `best.pt` when the validation fine
top-1 improves); `--resume` continues from `last.pt` with the same sampler and augmentation seeds.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.augment import AugmentedPhotos, decoded_cache, epoch_loader, pk_batches
from training.checkpoints import resume_state, save_atomically
from training.data import PhotoSet, load_photos
from training.losses import consistency_loss, supcon_loss
from vision.backbones import REGISTRY
from vision.model import ProductModel
from vision.preprocess import InputSpec, load_image


@dataclass
class TrainConfig:
    data: str
    out: str
    backbone: str = "tf_efficientnet_lite0"
    epochs: int = 15
    classes_per_batch: int = 8  # P
    photos_per_class: int = 4  # K; each batch also holds the P catalogue photos
    lr: float = 2e-3  # heads and projection
    backbone_lr_mult: float = 0.2
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    embedding_dim: int = 512
    head_scale: float = 24.0
    label_smoothing: float = 0.1
    coarse_weight: float = 0.5
    supcon_weight: float = 0.5
    supcon_temperature: float = 0.1
    # Share of training photos re-delivered by a channel first (re-encoded, palette, web-sized, DCT-scaled
    # decode; training/augment.py): the same photo should get the same answer from every channel.
    channel_p: float = 0.0
    # Weight of the consistency loss between each photo and its channel twin (the same view re-delivered by
    # a channel): KL of the fine head's answer and cosine of the embeddings, the twin as the fixed target.
    consistency_weight: float = 0.0
    # A fine-tuned checkpoint to start from instead of ImageNet (its backbone and embedding; heads whose label
    # space differs start anew): how the catalogue's own photos teach the served model more.
    init: str | None = None
    freeze_blocks: int = 2  # stem + this many of the backbone's blocks stay at their ImageNet weights
    sizes: list[int] = field(default_factory=lambda: [160, 192, 224])  # resolution per equal share of epochs
    cache_side: int = 288
    seed: int = 0
    threads: int = 0  # 0: every core
    max_steps_per_epoch: int = 0  # 0: a full pass over the training photos (tests use a small number)
    # "train": validate every epoch on val and keep the best epoch. "val": the final fit once the recipe was
    # chosen that way: train on train + val for exactly `epochs`, nothing held out, the last epoch is the result.
    fit_through: str = "train"

    @property
    def training_split(self) -> str:
        return "train+val" if self.fit_through == "val" else "train"

    def size_for_epoch(self, epoch: int) -> int:
        return self.sizes[min(len(self.sizes) - 1, epoch * len(self.sizes) // max(1, self.epochs))]


# ---------------------------------------------------------------------------------------------- model
def build_model(config: TrainConfig, photos: PhotoSet, pretrained: bool = True) -> ProductModel:
    model = ProductModel(
        config.backbone,
        len(photos.fine_labels),
        len(photos.coarse_labels),
        embedding_dim=config.embedding_dim,
        pretrained=pretrained,
        head_scale=config.head_scale,
    )
    for module in frozen_modules(model, config.freeze_blocks):
        for parameter in module.parameters():
            parameter.requires_grad = False
    return model.to(memory_format=torch.channels_last)


def start_from(model: ProductModel, checkpoint: str, photos: PhotoSet) -> None:
    """The weights of `checkpoint` wherever their shapes fit; a head only when its labels are the same, in the
    same order (a head of the same size over other or reordered labels would start every class wrong)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    same = {"fine_head.": state["fine_labels"] == photos.fine_labels,
            "coarse_head.": state["coarse_labels"] == photos.coarse_labels}  # fmt: skip
    own = model.state_dict()
    fitting = {
        k: v
        for k, v in state["model"].items()
        if k in own and own[k].shape == v.shape and all(ok or not k.startswith(head) for head, ok in same.items())
    }
    model.load_state_dict(fitting, strict=False)


def frozen_modules(model: ProductModel, blocks: int) -> list[torch.nn.Module]:
    if blocks <= 0:
        return []
    bb = model.backbone
    return [bb.conv_stem, bb.bn1, *list(bb.blocks)[:blocks]]


def set_train_mode(model: ProductModel, config: TrainConfig) -> None:
    model.train()
    for module in frozen_modules(model, config.freeze_blocks):
        module.eval()  # frozen layers keep their ImageNet BN statistics too


def train_logits(model: ProductModel, images: torch.Tensor):
    """NCHW uint8 -> embedding, fine logits, coarse logits (the exported graph applies softmax)."""
    x = ((images.float() - model.mean) / model.std).contiguous(memory_format=torch.channels_last)
    embedding = model.embed_normalised(x)
    return embedding, model.fine_head(embedding), model.coarse_head(embedding)


def make_optimizer(model: ProductModel, config: TrainConfig) -> torch.optim.Optimizer:
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        no_decay = parameter.ndim <= 1  # BN and biases
        groups.setdefault((is_backbone, no_decay), []).append(parameter)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": config.lr * (config.backbone_lr_mult if is_backbone else 1.0),
                "weight_decay": 0.0 if no_decay else config.weight_decay,
            }
            for (is_backbone, no_decay), params in groups.items()
        ]
    )


def make_scheduler(optimizer: torch.optim.Optimizer, labels: np.ndarray, config: TrainConfig):
    """Steps per epoch (the P x K batches the split's photos fill, capped by max_steps_per_epoch) and the
    warm-up + cosine learning-rate schedule over all epochs."""
    steps = len(pk_batches(labels, {}, config.classes_per_batch, config.photos_per_class, 0))
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    schedule = warmup_cosine(steps * config.epochs, max(1, int(steps * config.warmup_epochs)))
    return steps, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def embed_pixels(model: ProductModel, pixels: np.ndarray, batch: int = 64):
    model.eval()
    outs = [model(torch.from_numpy(pixels[i : i + batch])) for i in range(0, len(pixels), batch)]
    return tuple(torch.cat(parts).numpy() for parts in zip(*outs))


def validation_metrics(
    model: ProductModel,
    val_pixels: np.ndarray,
    val_fine: np.ndarray,
    val_coarse: np.ndarray,
    iconic_pixels: np.ndarray,
    iconic_labels: np.ndarray,
) -> dict[str, float]:
    from training.metrics import recall_at_k, topk_accuracy

    embedding, fine, coarse = embed_pixels(model, val_pixels)
    metrics = {
        "val_fine_top1": topk_accuracy(fine, val_fine, 1),
        "val_coarse_top1": topk_accuracy(coarse, val_coarse, 1),
    }
    if len(iconic_pixels):
        gallery = embed_pixels(model, iconic_pixels)[0]
        metrics["val_catalogue_r1"] = recall_at_k(embedding, val_fine, gallery, iconic_labels, 1)
    return metrics


# ---------------------------------------------------------------------------------------------- loop
def training_rows(train_set: PhotoSet, iconic_items: list) -> tuple[list[Path], np.ndarray, np.ndarray, dict[int, int]]:
    """What is trained on: the split's photos, then each product's catalogue (iconic) photo; their paths,
    fine and coarse labels, and the row of each product's iconic photo."""
    paths = [p.path for p in train_set.photos] + [path for _, path in iconic_items]
    labels = np.array([p.fine for p in train_set.photos] + [f for f, _ in iconic_items])
    coarse = np.array([p.coarse for p in train_set.photos] + [train_set.fine_to_coarse[f] for f, _ in iconic_items])
    iconic_rows = {f: len(train_set.photos) + i for i, (f, _) in enumerate(iconic_items)}
    return paths, labels, coarse, iconic_rows


def validation_arrays(val_set: PhotoSet | None, iconic_items: list, spec: InputSpec):
    """Model inputs and labels of the val photos (None without val) and of the iconic photos (the gallery
    that photo-to-catalogue recall is measured against)."""
    val_photos = val_set.photos if val_set is not None else []
    val_pixels = np.stack([load_image(p.path.read_bytes(), spec) for p in val_photos]) if val_photos else None
    val_fine = np.array([p.fine for p in val_photos])
    val_coarse = np.array([p.coarse for p in val_photos])
    iconic = [load_image(path.read_bytes(), spec) for _, path in iconic_items]
    iconic_pixels = np.stack(iconic) if iconic else np.zeros((0,))
    return val_pixels, val_fine, val_coarse, iconic_pixels, np.array([f for f, _ in iconic_items])


def train(config: TrainConfig, resume: bool = False, ui=None) -> Path:
    """Train; returns the path of the best checkpoint. `ui` is a training.progress.TrainProgress or None."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    state = None
    if resume:
        state, recipe = resume_state(
            last, asdict(config), same=("data", "backbone", "embedding_dim"), keep=("epochs", "threads")
        )
        config = TrainConfig(**recipe)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    if config.fit_through not in ("train", "val"):
        raise ValueError(f"fit_through must be 'train' or 'val', not {config.fit_through!r}")
    train_set = load_photos(config.data, config.training_split)
    val_set = load_photos(config.data, "val") if config.fit_through == "train" else None
    if not len(train_set):
        raise ValueError(f"{config.data}: the {config.training_split} split has no photos")
    iconic_items = sorted(train_set.iconic.items())
    paths, labels, coarse, iconic_rows = training_rows(train_set, iconic_items)
    cache_dir = out.parent / "cache"
    cache = decoded_cache(paths, config.cache_side, cache_dir, ui.stage("decoding photos once") if ui else None)
    spec = InputSpec(REGISTRY[config.backbone].input_size, REGISTRY[config.backbone].crop_pct)
    val_pixels, val_fine, val_coarse, iconic_pixels, iconic_labels = validation_arrays(val_set, iconic_items, spec)

    model = build_model(config, train_set, pretrained=state is None and config.init is None)
    if state is None and config.init:
        start_from(model, config.init, train_set)
    optimizer = make_optimizer(model, config)
    steps_per_epoch, scheduler = make_scheduler(optimizer, labels[: len(train_set.photos)], config)
    start_epoch, best, history = 0, -1.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]

    meta = checkpoint_meta(train_set, config)
    dataset = AugmentedPhotos(cache, config.channel_p, twins=config.consistency_weight > 0)
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 1000 + epoch)  # augmentation randomness, reproducible on resume
        dataset.size = config.size_for_epoch(epoch)
        batches = pk_batches(
            labels, iconic_rows, config.classes_per_batch, config.photos_per_class, config.seed * 1000 + epoch
        )
        batches = batches[:steps_per_epoch]
        loader = epoch_loader(dataset, batches)
        set_train_mode(model, config)
        started = time.perf_counter()
        update = ui.epoch(epoch, config.epochs, dataset.size, len(batches)) if ui else None
        seen, total_loss = train_epoch(
            model, optimizer, scheduler, zip(loader, batches), labels, coarse, config, update
        )
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch + 1,
            "size": dataset.size,
            "loss": total_loss / max(1, len(batches)),
            "images": seen,
            "seconds": round(seconds, 1),
            "images_per_s": round(seen / seconds, 1),
        }
        if val_pixels is not None:
            record.update(validation_metrics(model, val_pixels, val_fine, val_coarse, iconic_pixels, iconic_labels))
        history.append(record)
        # Nothing held out: a final fit ends at its last epoch; data without a val split keeps the lowest loss.
        score = epoch if config.fit_through == "val" else record.get("val_fine_top1", -record["loss"])
        improved = score > best
        best = max(best, score)
        save_epoch(
            out, {"model": model, "optimizer": optimizer, "scheduler": scheduler}, meta, epoch, best, history, improved
        )
        if ui:
            ui.epoch_done(record, improved)
    return out / "best.pt"


def checkpoint_meta(train_set: PhotoSet, config: TrainConfig) -> dict:
    """What every checkpoint carries besides the weights: the label spaces and the recipe."""
    labels = {"fine_labels": train_set.fine_labels, "coarse_labels": train_set.coarse_labels}
    return {**labels, "fine_to_coarse": train_set.fine_to_coarse, "config": asdict(config)}


def save_epoch(out: Path, parts: dict, meta: dict, epoch: int, best: float, history: list, improved: bool) -> None:
    """The epoch's checkpoints: `best.pt` (the model) when it improved, and `last.pt` (model, optimizer and
    schedule: what --resume continues from) always; and its record in history.jsonl."""
    states = {name: part.state_dict() for name, part in parts.items()}
    if improved:
        save_atomically({"model": states["model"], **meta, "epoch": epoch, "history": history}, out / "best.pt")
    save_atomically({**states, "epoch": epoch, "best": best, "history": history, **meta}, out / "last.pt")
    with open(out / "history.jsonl", "a") as f:
        f.write(json.dumps(history[-1]) + "\n")


def train_epoch(
    model: ProductModel,
    optimizer,
    scheduler,
    steps,
    labels: np.ndarray,
    coarse: np.ndarray,
    config: TrainConfig,
    update=None,
) -> tuple[int, float]:
    """One pass over `steps` ((images, their rows) batches): cross-entropy on both heads plus SupCon on the
    embedding, plus the channel-consistency loss when the batches carry twins. Returns the photos seen and
    the summed loss; `update(step, running loss, images/s)`."""
    started, seen, running, total_loss = time.perf_counter(), 0, None, 0.0
    for step, (images, index) in enumerate(steps):
        images, twins = images if isinstance(images, (tuple, list)) else (images, None)
        y_fine = torch.from_numpy(labels[index])
        y_coarse = torch.from_numpy(coarse[index])
        embedding, fine_logits, coarse_logits = train_logits(model, images)
        loss_fine = F.cross_entropy(fine_logits, y_fine, label_smoothing=config.label_smoothing)
        loss_coarse = F.cross_entropy(coarse_logits, y_coarse, label_smoothing=config.label_smoothing)
        loss_metric = supcon_loss(embedding, y_fine, config.supcon_temperature)
        loss = loss_fine + config.coarse_weight * loss_coarse + config.supcon_weight * loss_metric
        if twins is not None:
            with torch.no_grad():  # the twin is a fixed target: one forward pass, no second training pass
                twin_embedding, twin_logits, _ = train_logits(model, twins)
            consistency = consistency_loss(embedding, fine_logits, twin_embedding, twin_logits)
            loss = loss + config.consistency_weight * consistency
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(index)
        total_loss += loss.item()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if update:
            update(step + 1, running, seen / (time.perf_counter() - started))
    return seen, total_loss


def load_checkpoint(path: str | Path) -> tuple[ProductModel, dict]:
    """The model of a `best.pt`/`last.pt` and its metadata (labels, config, history)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig(**state["config"])
    model = ProductModel(
        config.backbone,
        len(state["fine_labels"]),
        len(state["coarse_labels"]),
        embedding_dim=config.embedding_dim,
        pretrained=False,
        head_scale=config.head_scale,
    )
    model.load_state_dict(state["model"])
    return model.eval(), state
