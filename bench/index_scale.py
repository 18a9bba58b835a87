"""The embedded vector index (api.catalog.index.FaissIndex, as the service configures it) at catalogue
scale: recall@10 against exact search, one-query latency (p50, p99), memory and build time.

    python bench/index_scale.py                    # 100k and 1M vectors
    python bench/index_scale.py --sizes 100000

The vectors are real: the served model's embeddings of the grocery-store train photos (../shared/data;
the test split is not read), each catalogue vector one of them plus Gaussian noise scaled so that a
perturbed vector is as similar to its source as two photos of one product are to each other in the real
data (the mean within-class cosine, measured here). So the index sees clusters of look-alike products as
a real catalogue has, not uniform noise (on which every index looks good or bad for the wrong reasons).
Queries are fresh perturbations of random real embeddings; the exact top 10 comes from brute force.

`--data interpolated` spreads the catalogue out instead: each vector lies between two real embeddings of
one coarse category (a random point on the segment, then the same noise), a continuum of look-alike
products rather than 2,640 tight clusters, which is closer to a catalogue of a million distinct products.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
from common import MODEL_DIR, ROOT, emit, percentile

from api.catalog.index import HNSW_EF_SEARCH, HNSW_M, FaissIndex
from api.catalog.records import IndexEntries
from vision.preprocess import load_image
from vision.runtimes.onnx import OnnxRuntimeEmbedder

DATA = ROOT.parent / "shared" / "data" / "grocery_store" / "dataset"
CACHE = Path("/tmp/seesku-bench-grocery-train-embeddings.npz")
QUERIES = 1000
K = 10


def real_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, class ids) of the grocery-store train photos, cached between runs."""
    if CACHE.exists():
        cached = np.load(CACHE)
        return cached["embeddings"], cached["labels"]
    embedder = OnnxRuntimeEmbedder(MODEL_DIR)
    spec = embedder.manifest.input.spec()
    rows = [[x.strip() for x in line.split(",")] for line in (DATA / "train.txt").read_text().splitlines() if line]
    paths = [DATA / r[0] for r in rows]
    labels = np.array([[int(r[1]), int(r[2])] for r in rows])  # fine and coarse class
    out = []
    for start in range(0, len(paths), 32):
        pixels = np.stack([load_image(p.read_bytes(), spec) for p in paths[start : start + 32]])
        out.append(embedder.embed(pixels).embedding)
    embeddings = np.concatenate(out).astype(np.float32)
    np.savez(CACHE, embeddings=embeddings, labels=labels)
    return embeddings, labels


def within_class_cosine(embeddings: np.ndarray, labels: np.ndarray) -> float:
    sims = []
    for label in np.unique(labels):
        members = embeddings[labels == label]
        if len(members) > 1:
            gram = members @ members.T
            sims.append(gram[~np.eye(len(members), dtype=bool)].mean())
    return float(np.mean(sims))


def perturb(base: np.ndarray, n: int, cosine: float, rng: np.random.Generator, pick: bool = True) -> np.ndarray:
    """n unit vectors, each a random base vector (pick=False: base[i] for the i-th) plus isotropic noise
    giving `cosine` to it on average."""
    dim = base.shape[1]
    # For unit b and noise e ~ N(0, s^2 I): cos(b, b+e) ~ 1/sqrt(1 + s^2 d); solve for s.
    sigma = np.sqrt((1 / cosine**2 - 1) / dim)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        sources = base[rng.integers(0, len(base), m)] if pick else base[start : start + m]
        chunk = sources + rng.standard_normal((m, dim), dtype=np.float32) * sigma
        out[start : start + m] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def interpolate(base: np.ndarray, coarse: np.ndarray, n: int, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors, each between two real embeddings of one coarse category, then perturbed."""
    out = np.empty((n, base.shape[1]), np.float32)
    groups = [np.flatnonzero(coarse == c) for c in np.unique(coarse)]
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        group = rng.integers(0, len(groups), m)
        i = np.array([groups[g][rng.integers(len(groups[g]))] for g in group])
        j = np.array([groups[g][rng.integers(len(groups[g]))] for g in group])
        t = rng.uniform(0, 1, (m, 1)).astype(np.float32)
        mixed = t * base[i] + (1 - t) * base[j]
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        out[start : start + m] = perturb(mixed, m, cosine, rng, pick=False)
    return out


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def exact_top_k(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    faiss.omp_set_num_threads(2)
    _, ids = flat.search(queries, K)
    return ids


def measure(size: int, data: str, base: np.ndarray, coarse: np.ndarray, cosine: float, rng) -> dict:
    if data == "interpolated":
        vectors = interpolate(base, coarse, size, cosine, rng)
        queries = interpolate(base, coarse, QUERIES, cosine, rng)
    else:
        vectors = perturb(base, size, cosine, rng)
        queries = perturb(base, QUERIES, cosine, rng)
    truth = exact_top_k(vectors, queries)

    before = rss_mb()
    index = FaissIndex(vectors.shape[1])  # the service's defaults: HNSW above 20,000 vectors
    t = time.perf_counter()
    index.rebuild(
        IndexEntries(np.arange(s, min(s + 50_000, size), dtype=np.int64), vectors[s : s + 50_000])
        for s in range(0, size, 50_000)
    )
    build_s = time.perf_counter() - t
    index_mb = rss_mb() - before

    latencies, recalls = [], []
    for q, expected in zip(queries, truth):
        t = time.perf_counter()
        _, ids = index.search(q, K)
        latencies.append((time.perf_counter() - t) * 1e3)
        recalls.append(len(set(ids.tolist()) & set(expected.tolist())) / K)
    return {
        "data": data,
        "vectors": size,
        "index": "HNSW" if index.is_hnsw else "flat",
        "hnsw_m": HNSW_M,
        "ef_search": HNSW_EF_SEARCH,
        "recall_at_10": round(statistics.mean(recalls), 4),
        "search_p50_ms": round(percentile(latencies, 50), 3),
        "search_p99_ms": round(percentile(latencies, 99), 3),
        "build_s": round(build_s, 1),
        "index_rss_mb": round(index_mb, 1),
        "vectors_mb": round(vectors.nbytes / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--data", nargs="+", choices=["perturbed", "interpolated"], default=["perturbed", "interpolated"]
    )
    args = parser.parse_args()
    base, labels = real_embeddings()
    cosine = within_class_cosine(base, labels[:, 0])
    rng = np.random.default_rng(0)
    results = [measure(size, data, base, labels[:, 1], cosine, rng) for data in args.data for size in args.sizes]
    emit(
        {
            "bench": "index_scale",
            "real_embeddings": len(base),
            "perturbation_cosine_to_source": round(cosine, 4),
            "queries": QUERIES,
            "one_query_at_a_time": True,
            "sizes": results,
            "target": "recall@10 >= 0.95 at p99 <= 10 ms, 1M vectors",
        }
    )


if __name__ == "__main__":
    main()
