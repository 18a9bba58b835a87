"""The product detector (torch): a CenterNet-style head on the pretrained EfficientNet-Lite trunk, and its export.

Why this shape: products in a shopper's photo are few (one to a handful) and large, so one output grid at
stride 8 with a score per cell and a box per cell is enough; anchors, several grids and per-class scores
would cost time on a 2-core CPU for nothing. The trunk stops before the last, widest stages' 1x1 head
(stride 32 is the deepest feature used), a small top-down path brings strides 32 and 16 down to 8, and two
3x3 convolutions predict, per cell: the score that a product's centre lies there, the offset of that centre
within the cell and the log of the box's width and height in cells.

The graph does the decoding that is the same for every runtime: the 3x3 max-pool that keeps each
neighbourhood's peak, and the boxes in fractions of the photo. What is left (threshold, suppression) is
`vision.detection.decode_detections`, shared by every caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vision.backbones import REGISTRY, create_backbone
from vision.detection import INPUT_NAME, OUTPUT_NAMES, DetectorManifest
from vision.export import export_uint8_graph
from vision.files import atomic_path
from vision.runtimes.onnx import onnx_session

PARITY_MAX_SCORE_DIFF = 1e-3
PARITY_MAX_BOX_DIFF = 2e-3  # of the photo's side
# The EfficientNet-Lite stages whose outputs feed the head: strides 8, 16 and 32.
STAGES = {8: 2, 16: 4, 32: 6}
WIDTH = 64


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ProductDetector(nn.Module):
    def __init__(self, backbone: str = "tf_efficientnet_lite0", input_size: int = 256, pretrained: bool = True):
        super().__init__()
        cfg = REGISTRY[backbone]
        self.backbone_name, self.input_size, self.stride = backbone, input_size, 8
        trunk = create_backbone(backbone, pretrained=pretrained)
        self.stem = nn.Sequential(trunk.conv_stem, trunk.bn1)
        self.blocks = trunk.blocks[: STAGES[32] + 1]
        channels = {s: self.blocks[i][-1].conv_pwl.out_channels for s, i in STAGES.items()}
        self.lateral = nn.ModuleDict({str(s): nn.Conv2d(c, WIDTH, 1) for s, c in channels.items()})
        self.smooth = _conv(WIDTH, WIDTH)
        self.tower = nn.Sequential(_conv(WIDTH, WIDTH), _conv(WIDTH, WIDTH))
        self.score = nn.Conv2d(WIDTH, 1, 1)
        self.geometry = nn.Conv2d(WIDTH, 4, 1)  # centre offset (2) in cells, log width and height (2) in cells
        nn.init.constant_(self.score.bias, -4.6)  # a prior of 1 % per cell: the focal loss starts stable
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255.0)

    def freeze(self, stages: int) -> list[nn.Module]:
        """Keep the stem and the first `stages` stages as pretrained (no gradient); returns them, for the
        caller to hold in eval mode. The high-resolution stages cost the most to train and learn the least."""
        frozen = [self.stem, *self.blocks[:stages]] if stages > 0 else []
        for module in frozen:
            module.requires_grad_(False)
        return frozen

    def trunk_parameters(self):
        return [*self.stem.parameters(), *self.blocks.parameters()]

    def raw(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC -> score logits (N, 1, G, G) and geometry (N, 4, G, G): what the loss sees."""
        x = self.stem((pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std)
        features = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            for stride, stage in STAGES.items():
                if stage == i:
                    features[stride] = x
        top = self.lateral["32"](features[32])
        mid = self.lateral["16"](features[16]) + F.interpolate(top, scale_factor=2.0, mode="nearest")
        fine = self.lateral["8"](features[8]) + F.interpolate(mid, scale_factor=2.0, mode="nearest")
        h = self.tower(self.smooth(fine))
        return self.score(h), self.geometry(h)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC -> scores (N, G*G), each neighbourhood's peak only, and boxes (N, G*G, 4) in fractions."""
        logits, geometry = self.raw(pixels)
        heat = logits.sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
        n, _, g, _ = heat.shape
        cells = torch.arange(g, dtype=heat.dtype, device=heat.device)
        cx = (cells.view(1, 1, g) + geometry[:, 0]) / g
        cy = (cells.view(1, g, 1) + geometry[:, 1]) / g
        half_w = geometry[:, 2].clamp(max=8.0).exp() / (2 * g)
        half_h = geometry[:, 3].clamp(max=8.0).exp() / (2 * g)
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1).clamp(0.0, 1.0)
        return peaks.reshape(n, g * g), boxes.reshape(n, g * g, 4)


def export_onnx(model: ProductDetector, path: Path) -> None:
    export_uint8_graph(model, path, model.input_size, OUTPUT_NAMES, max_batch=256)


def parity(model: ProductDetector, onnx_path: Path, pixels: np.ndarray) -> dict[str, float]:
    """ONNX Runtime against torch on the same uint8 batch: largest score and box differences."""
    ort_scores, ort_boxes = onnx_session(onnx_path).run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
    with torch.no_grad():
        t_scores, t_boxes = (t.numpy() for t in model(torch.from_numpy(pixels)))
    # Only where a product is: a box of a cell nobody looks at may differ at a clamp's edge.
    relevant = t_scores > 0.05
    box_diff = float(np.abs(ort_boxes - t_boxes)[relevant].max()) if relevant.any() else 0.0
    return {
        "parity_max_score_diff": float(np.abs(ort_scores - t_scores).max()),
        "parity_max_box_diff": box_diff,
        "parity_samples": float(len(pixels)),
    }


def write_detector(
    model: ProductDetector,
    manifest: DetectorManifest,
    out_dir: Path,
    check_pixels: Sequence[np.ndarray],
    log: Callable[[str], None] = print,
) -> DetectorManifest:
    """Export, check parity with torch, then write `out_dir/1/model.onnx` and its manifest; nothing is replaced
    unless the parity check passes. The version is the graph's checksum."""
    graph = out_dir / "1" / "model.onnx"
    with atomic_path(graph, suffix=".onnx") as tmp:
        log("exporting the detector to ONNX")
        export_onnx(model, tmp)
        metrics = parity(model, tmp, np.stack(check_pixels))
        log(f"parity: {metrics}")
        if (
            metrics["parity_max_score_diff"] > PARITY_MAX_SCORE_DIFF
            or metrics["parity_max_box_diff"] > PARITY_MAX_BOX_DIFF
        ):
            raise RuntimeError(f"ONNX and torch detections differ: {metrics}")
    version = hashlib.sha256(graph.read_bytes()).hexdigest()[:12]
    manifest = manifest.model_copy(update={"version": version, "metrics": {**manifest.metrics, **metrics}})
    manifest.save(out_dir)
    return manifest
