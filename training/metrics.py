"""Evaluation metrics over numpy arrays (no torch): shared by training validation and `seesku eval`."""

from __future__ import annotations

import math

import numpy as np


def topk_accuracy(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of rows whose target is among the k highest scores."""
    if len(targets) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def recall_at_k(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray, k: int
) -> float:
    """Retrieval recall@k: a query hits when one of its k most similar gallery items has its label."""
    similarity = queries @ gallery.T
    k = min(k, len(gallery))
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return float((gallery_labels[top] == query_labels[:, None]).any(axis=1).mean())


def nearest_neighbour_accuracy(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> float:
    """1-NN classification by cosine similarity (rows L2-normalised)."""
    return recall_at_k(queries, query_labels, gallery, gallery_labels, 1)


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (targets, predictions), 1)
    return counts


def per_class_accuracy(counts: np.ndarray) -> np.ndarray:
    """Diagonal over row sums; NaN for classes without samples."""
    totals = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(counts) / np.maximum(totals, 1), np.nan)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for two classifiers on the same samples, from the samples only A gets
    right and those only B gets right: the chance of a split at least that lopsided if both were equally
    good (each discordant sample a fair coin)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)
