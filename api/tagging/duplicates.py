"""Near-duplicate groups of a tagging run: the same thing (embedding cosine) in the same picture (layout
correlation), found over every photo of the run at its end."""

from __future__ import annotations

import os

import faiss
import numpy as np


def duplicate_groups(
    keys: list[str],
    embeddings: np.ndarray,
    threshold: float,
    layouts: np.ndarray | None = None,
    layout_threshold: float = 0.0,
) -> dict[str, int]:
    """Near-duplicate groups: connected components of the graph 'embedding cosine >= threshold and layout
    correlation >= layout_threshold'. Ids 1.. in input order; photos without a near-duplicate get no group."""
    if len(keys) < 2:
        return {}
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    # The run's one step on a single thread while the other cores wait: give it all of them (0.3 -> 0.15 s
    # for 5,000 photos on 2 cores), then back to the one thread every index search in this thread expects.
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    try:
        lims, _, ids = index.range_search(np.ascontiguousarray(embeddings, dtype=np.float32), threshold)
    finally:
        faiss.omp_set_num_threads(1)
    # Candidate pairs as arrays: the same product's other shots pass the embedding test by the thousand, the
    # layout test (vectorised here; a Python loop over the pairs took 0.4 s of a 5,000-photo run) drops them.
    first = np.repeat(np.arange(len(keys)), np.diff(lims.astype(np.int64)))
    second = ids.astype(np.int64)
    pair = first != second  # both directions: float rounding can list a pair on one side only
    first, second = first[pair], second[pair]
    if layouts is not None:
        correlation = np.empty(len(first), np.float32)
        for at in range(0, len(first), 4096):  # gathered rows in cache-sized pieces: 5x faster than at once
            part = slice(at, at + 4096)
            correlation[part] = np.einsum("ij,ij->i", layouts[first[part]], layouts[second[part]])
        same_picture = correlation >= layout_threshold
        first, second = first[same_picture], second[same_picture]
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(first.tolist(), second.tolist()):
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = [find(i) for i in range(len(keys))]
    sizes = np.bincount(roots, minlength=len(keys))
    group_of_root: dict[int, int] = {}
    groups = {}
    for key, root in zip(keys, roots):
        if sizes[root] > 1:
            groups[key] = group_of_root.setdefault(root, len(group_of_root) + 1)
    return groups
