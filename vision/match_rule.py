"""Is a search's top product the photographed product? The rule behind `matched` in every search answer.

confidence = the mean of the top product's visual score (cosine of the photo to its best-matching photo) and
the smaller of that score and the heads' probability of its fine category: the category can lower the
confidence, never lift it above what the photo looks like (the heads call a checkerboard Red-Grapefruit at
0.96; no product photo resembles it). For a product whose category the heads do not know (added after
training) the visual score alone. `matched` = confidence >= threshold. It judges the top product against
the catalogue as it is: a photo of a product no longer sold finds another product on top, whose category the
heads do not give, and a photo of no product at all resembles no product photo closely.

The threshold belongs to a model: `seesku eval open-set --split val` calibrates it and writes it next to
the model as `match_rule.json`. A model without one gets DEFAULT_THRESHOLD and a warning at start-up.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vision.files import atomic_write

RULE_FILE = "match_rule.json"
DEFAULT_THRESHOLD = 0.7  # uncalibrated: between the served model's val negatives (0.68) and positives (0.80, 1 %)


def match_confidence(visual_score: float, category_probability: float | None) -> float:
    category = visual_score if category_probability is None else min(visual_score, category_probability)
    return (visual_score + category) / 2


@dataclass(frozen=True)
class MatchRule:
    threshold: float = DEFAULT_THRESHOLD
    calibrated_on: str | None = None  # None: DEFAULT_THRESHOLD, no calibration
    model: str | None = None  # served_id of the model it was calibrated for
    command: str = ""
    val: dict = field(default_factory=dict)  # the calibration's figures

    @classmethod
    def load(cls, model_dir: str | Path) -> MatchRule:
        path = Path(model_dir) / RULE_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / RULE_FILE
        atomic_write(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    def judge(self, visual_score: float | None, category_probability: float | None) -> tuple[bool, float]:
        """(matched, confidence) of a top product; (False, 0.0) without one (an empty catalogue)."""
        if visual_score is None:
            return False, 0.0
        confidence = match_confidence(visual_score, category_probability)
        return confidence >= self.threshold, confidence
