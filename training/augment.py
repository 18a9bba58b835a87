"""What the vision trainer feeds the model: every photo decoded once (memory-mapped), augmentations that
look like shoppers' phone photos as the channels deliver them, and P x K batches (P products, K photos each,
plus their catalogue photo).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from PIL import Image

from vision.files import atomic_path
from vision.preprocess import decode


def decoded_cache(
    paths: list[Path], side: int, cache_dir: Path, progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """Every photo decoded once (EXIF-rotated, RGB, short side `side`, centre square), memory-mapped."""
    key = hashlib.sha256(f"{side}\n".encode() + "\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:16]
    file = cache_dir / f"decoded-{side}-{len(paths)}-{key}.npy"
    if file.exists():
        return np.load(file, mmap_mode="r")
    with atomic_path(file, suffix=".npy") as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), side, side, 3))
        for i, path in enumerate(paths):
            im = decode(path.read_bytes(), min_size=side)
            scale = side / min(im.size)
            w, h = max(side, round(im.width * scale)), max(side, round(im.height * scale))
            left, top = (w - side) // 2, (h - side) // 2
            array[i] = np.asarray(
                im.resize((w, h), Image.Resampling.BICUBIC).crop((left, top, left + side, top + side))
            )
            if progress:
                progress(i + 1, len(paths))
        array.flush()
        del array
    return np.load(file, mmap_mode="r")


def _reencoded(im: Image.Image, fmt: str, **params) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    buf.seek(0)
    return Image.open(buf)


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    return _reencoded(im, "JPEG", quality=quality).convert("RGB")


def _webp(im: Image.Image, quality: int) -> Image.Image:
    return _reencoded(im, "WEBP", quality=quality).convert("RGB")


def _palette(im: Image.Image, quality: int) -> Image.Image:
    # GIF's 256 colours; the fast octree quantiser (under 1 ms) instead of median cut (100 ms), a like error
    return im.quantize(256, method=Image.Quantize.FASTOCTREE).convert("RGB")


def _web_size(im: Image.Image, quality: int) -> Image.Image:
    side = 128 + quality  # a site's resized upload, 158-223 px short side, which training upsamples again
    scale = side / min(im.size)
    small = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    return _jpeg(small, 85)


def _dct_scaled(im: Image.Image, quality: int) -> Image.Image:
    """A large camera JPEG as the service decodes it: libjpeg's DCT scaling (1/2 here) instead of a resample."""
    big = _reencoded(im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC), "JPEG", quality=92)
    big.draft("RGB", im.size)
    return big.convert("RGB")


# How channels deliver a photo (`training/channels.py` measures the same list through the service); each gets
# a quality drawn from 30-95. AVIF and HEIC are left out: slow encoders whose artefacts JPEG and WebP cover.
CHANNEL_CODECS = (_jpeg, _jpeg, _webp, _palette, _web_size, _dct_scaled)


class ChannelDelivery(torch.nn.Module):
    """With probability `p`, the photo re-delivered by one channel: re-encoded, converted or resized."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or torch.rand(()) >= self.p:
            return image
        codec = CHANNEL_CODECS[int(torch.randint(len(CHANNEL_CODECS), ()))]
        quality = int(torch.randint(30, 96, ()))
        im = Image.fromarray(image.permute(1, 2, 0).numpy())
        return torch.from_numpy(np.asarray(codec(im, quality)).copy()).permute(2, 0, 1)


def phone_photo_augment(size: int, channel_p: float = 0.0) -> T.Compose:
    """Augmentations that look like shoppers' phone photos as channels deliver them: the channel first (it acts
    on the whole photo, before the service crops), then framing, tilt, perspective, light, blur, JPEG."""
    return T.Compose(
        [
            ChannelDelivery(channel_p),
            T.RandomResizedCrop(size, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            T.RandomApply([T.RandomRotation(15)], p=0.4),
            T.RandomPerspective(distortion_scale=0.25, p=0.3),
            T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
            T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
            T.RandomApply([T.JPEG(quality=(30, 90))], p=0.3),
        ]
    )


class AugmentedPhotos(torch.utils.data.Dataset):
    """The augmented photo; with `twins`, also its channel twin: the same augmented view re-delivered by a
    channel, for the consistency loss (the two must get the same answer)."""

    def __init__(self, cache: np.ndarray, channel_p: float = 0.0, twins: bool = False):
        self.cache = cache
        self.channel_p = channel_p
        self.twins = twins
        self.size = 224
        self.seed = 0

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.cache[index])).permute(2, 0, 1)  # copy out of the read-only memmap
        view = phone_photo_augment(self.size, self.channel_p)(image)
        if not self.twins:
            return view
        return view, T.Resize((self.size, self.size), antialias=True)(ChannelDelivery(1.0)(view))


def pk_batches(labels: np.ndarray, iconic_rows: dict[int, int], p: int, k: int, seed: int) -> list[list[int]]:
    """One epoch of batches: P products x K photos each (+ each product's catalogue photo), every photo once."""
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    batches = []
    while pools:
        classes = list(rng.permutation(list(pools)))[:p]
        batch = []
        for c in classes:
            take, pools[c] = pools[c][:k], pools[c][k:]
            batch += [int(i) for i in take]
            if c in iconic_rows:
                batch.append(iconic_rows[c])
            if not pools[c]:
                del pools[c]
        batches.append(batch)
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


# ---------------------------------------------------------------------------------------------- loading


def epoch_loader(dataset: AugmentedPhotos, batches: list[list[int]]) -> torch.utils.data.DataLoader:
    """One epoch's batches, augmented in a forked worker while the model trains on the last ones."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=1,
        worker_init_fn=_worker_init,
        multiprocessing_context="fork" if os.name == "posix" else None,
    )


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # the main process's two threads do the training
