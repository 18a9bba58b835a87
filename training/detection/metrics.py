"""Detection figures: AP at an IoU, and greedy matching of found boxes to true ones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vision.detection import Box, iou_matrix


def match(found: Sequence[Box], truth: np.ndarray, iou: float) -> list[int]:
    """For each found box, best first, the index of the true box it finds (IoU >= `iou`, each true box found
    at most once) or -1: a false object, or a second box on a product already found."""
    taken: set[int] = set()
    result = []
    overlaps = iou_matrix(np.stack([b.as_array() for b in found]), truth) if len(found) and len(truth) else None
    for i in range(len(found)):
        best = -1
        if overlaps is not None:
            for j in np.argsort(-overlaps[i]):
                if overlaps[i, j] < iou:
                    break
                if int(j) not in taken:
                    best = int(j)
                    break
        if best >= 0:
            taken.add(best)
        result.append(best)
    return result


def average_precision(found: Sequence[Sequence[Box]], truth: Sequence[np.ndarray], iou: float = 0.5) -> float:
    """Class-agnostic AP over every photo's boxes (all-point interpolated precision, as PASCAL VOC since 2010)."""
    scored = []
    for boxes, true in zip(found, truth):
        ordered = sorted(boxes, key=lambda b: -b.score)
        for box, hit in zip(ordered, match(ordered, true, iou)):
            scored.append((box.score, hit >= 0))
    positives = sum(len(t) for t in truth)
    if positives == 0:
        return 0.0
    scored.sort(key=lambda s: -s[0])
    hits = np.array([h for _, h in scored], dtype=float)
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, 1e-9)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[1.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def recall_and_false(found: Sequence[Sequence[Box]], truth: Sequence[np.ndarray], threshold: float) -> dict[str, float]:
    """The boxes scoring at least `threshold`: the share of true boxes found (IoU >= 0.5) and the boxes per photo
    that find none (false objects, second boxes on a product included)."""
    hits = [match([b for b in boxes if b.score >= threshold], true, 0.5) for boxes, true in zip(found, truth)]
    return {
        "recall": sum(sum(h >= 0 for h in hs) for hs in hits) / max(1, sum(len(t) for t in truth)),
        "false_per_photo": sum(sum(h < 0 for h in hs) for hs in hits) / max(1, len(truth)),
    }
