"""What a tagging run may be told: batch size, workers, thresholds, the stall timeout."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)  # by name only: a positional call once put every threshold one field off
class TagOptions:
    k: int = 3  # catalogue matches per photo
    objects: bool = False  # also a row per product the detector finds in each photo (`seesku tag --objects`)
    batch: int = 32
    workers: int = 0  # processes that decode and embed; 0: the runtime's choice (one per core for ONNX Runtime)
    read_ahead: int = 128  # photos handed to the workers ahead of the writer at most (batches: at least workers + 1)
    # Near-duplicates need both: the same thing (embedding cosine) AND the same picture (layout correlation).
    # The embedding alone cannot tell a re-encoded copy from another photo of the same product: fine-tuning
    # made those close on purpose (measured in bench/tagging.py).
    duplicate_threshold: float = 0.90
    layout_threshold: float = 0.92  # both chosen on a folder generated with another seed than the bench's
    blur_threshold: float = 60.0  # variance of the Laplacian of the model input below which a photo is blurry
    min_side: int = 64  # photos with a shorter side are flagged too small
    # A batch the workers have held this long has hung (a decoder stuck on a photo, a runtime that never
    # answers): its worker is stopped and the photo that hangs is found as a crashing one is. A batch of 32
    # takes well under a second on a laptop core; a fresh worker's start is counted too (a few seconds).
    stall_timeout_s: float = 300.0
