"""Bulk tagging: every photo of a folder, zip or CSV gets categories, catalogue matches, a near-duplicate
group and quality flags.

Worker processes (as many as the runtime's `BulkPlan` says: one per core for ONNX Runtime) each take a
batch, decode it (`vision.preprocess`, the same transform as search) and embed it on their own model
session, so each core works on one task at a time; the main process matches the results against the
catalogue and writes them. Progress lives in a SQLite state file next to the output
(`<out>.state.sqlite3`): each batch is one transaction, so a rerun skips what is done and a kill at any
moment loses at most the batches in flight. The output itself is appended batch by batch (a valid partial
file at any time) and rewritten at the end, atomically, with the duplicate groups, which need every
embedding of the run.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import signal
import sqlite3
import time
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cv2
import faiss
import numpy as np

from api.tagging.sources import Item
from vision.preprocess import ImageError, InputSpec, Limits, decode_opened, open_image, to_model_input, torch_resize
from vision.runtimes import Embedder, EmbedderOutput

CSV_COLUMNS = [
    "path", "status", "fine", "fine_probability", "coarse", "coarse_probability", "matches",
    "duplicate_group", "flags", "blur_variance", "width", "height", "error",
]
Matcher = Callable[[np.ndarray, np.ndarray, int], list[tuple[str, float]]]


@dataclass(frozen=True, kw_only=True)  # by name only: a positional call once put every threshold one field off
class TagOptions:
    k: int = 3  # catalogue matches per photo
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


# ---------------------------------------------------------------------------------------------- workers
_worker: dict = {}


def _init_worker(spec: InputSpec, limits: Limits, options: TagOptions, embedder_factory: Callable[[], Embedder]) -> None:
    # Ctrl-C reaches the whole process group; the run that owns the workers decides when they stop (the CLI
    # writes its partial output, a server's job runner re-queues its job), not the signal, mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    _worker.update(spec=spec, limits=limits, options=options, zips={}, resize=torch_resize(),
                   pixels=np.empty((options.batch, spec.size, spec.size, 3), np.uint8))
    try:
        _worker["embedder"] = embedder_factory()
    except Exception as exc:  # raised from tag_batch instead, where the run reports it; from here it would be lost
        _worker["embedder_error"] = exc


def analyse(item: Item, out: np.ndarray) -> tuple[Item, dict]:
    """Decode one photo into `out` (model input) and measure its quality; never raises for a bad photo."""
    spec, limits, options = _worker["spec"], _worker["limits"], _worker["options"]
    try:
        data = item.read(_worker["zips"])
        im = open_image(data, limits)
        width, height = im.size
        out[...] = to_model_input(decode_opened(im, spec.resize_size), spec, _worker["resize"])
    except (ImageError, OSError, zipfile.BadZipFile, KeyError) as exc:
        return item, {"status": "unreadable", "error": str(exc), "flags": ["unreadable"]}
    gray = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
    blur = float(cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))[1][0, 0] ** 2)
    info_layout = layout_vector(gray)
    flags = []
    if min(width, height) < options.min_side:
        flags.append("too_small")
    if blur < options.blur_threshold:
        flags.append("blurry")
    return item, {"status": "ok", "width": width, "height": height, "blur_variance": round(blur, 1), "flags": flags,
                  "_layout": info_layout}


def tag_batch(items: Sequence[Item]) -> tuple[list[tuple[Item, dict]], EmbedderOutput | None]:
    """Decode a batch and embed the photos that decoded, in this worker: (item, analysis) of every photo in
    order, and the model's outputs of the readable ones in the same order (None when none was)."""
    if "embedder_error" in _worker:
        raise _worker["embedder_error"]
    pixels = _worker["pixels"]
    analysed, readable = [], 0
    for item in items:
        analysed.append(analyse(item, pixels[readable]))
        readable += analysed[-1][1]["status"] == "ok"
    return analysed, _worker["embedder"].embed(pixels[:readable]) if readable else None


def layout_vector(gray: np.ndarray) -> np.ndarray:
    """16x16 grey thumbnail, mean-centred and L2-normalised: the dot product of two is their correlation,
    unchanged by resizing, re-encoding and brightness, and low for another shot of the same product."""
    small = cv2.resize(gray, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    small -= small.mean()
    return small / (np.linalg.norm(small) + 1e-6)


class _Stalled(Exception):
    """A batch outlived TagOptions.stall_timeout_s with the workers."""


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool's workers now, whatever they are doing, and let the pool go. Python 3.14 has
    `ProcessPoolExecutor.kill_workers()`; before it the process handles are only in `_processes`."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------- state
class TagState:
    """What a run has done: one row per photo with its result and embedding."""

    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS photos (key TEXT PRIMARY KEY, ord INTEGER NOT NULL, row TEXT NOT NULL, "
            "embedding BLOB, layout BLOB)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.commit()

    def check_meta(self, **values: str) -> None:
        """The state belongs to one input and one model: refuse to mix runs."""
        stored = dict(self.db.execute("SELECT name, value FROM meta"))
        for name, value in values.items():
            if name in stored and stored[name] != value:
                raise ValueError(f"{self.path} was made with {name}={stored[name]!r}, not {value!r}; use another --out")
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)", values.items())

    def done_keys(self) -> set[str]:
        return {k for (k,) in self.db.execute("SELECT key FROM photos")}

    def add(self, rows: Sequence[tuple[str, int, dict, np.ndarray | None, np.ndarray | None]]) -> None:
        def blob(v):
            return None if v is None else v.astype(np.float32).tobytes()

        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO photos VALUES (?, ?, ?, ?, ?)",
                [(k, o, json.dumps(r), blob(e), blob(lay)) for k, o, r, e, lay in rows],
            )

    def rows(self) -> list[dict]:
        return [json.loads(r) for (r,) in self.db.execute("SELECT row FROM photos ORDER BY ord")]

    def embeddings(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Keys, embeddings and layout vectors of every decoded photo, in input order."""
        keys, vectors, layouts = [], [], []
        for key, e, lay in self.db.execute(
                "SELECT key, embedding, layout FROM photos WHERE embedding IS NOT NULL ORDER BY ord"):
            keys.append(key)
            vectors.append(np.frombuffer(e, dtype=np.float32))
            layouts.append(np.frombuffer(lay, dtype=np.float32))
        if not keys:
            return keys, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        return keys, np.stack(vectors), np.stack(layouts)

    def set_groups(self, groups: dict[str, int]) -> list[dict]:
        """Store each photo's duplicate group (None: none) and return every row in input order, as `rows`.
        Only rows whose group changed are rewritten: most photos have none, before and after."""
        rows, changed = [], []
        for key, row in self.db.execute("SELECT key, row FROM photos ORDER BY ord"):
            data = json.loads(row)
            group = groups.get(key)
            if data.get("duplicate_group") != group:
                data["duplicate_group"] = group
                changed.append((json.dumps(data), key))
            rows.append(data)
        with self.db:
            self.db.executemany("UPDATE photos SET row = ? WHERE key = ?", changed)
        return rows

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------------------------------------- output
def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"{path.name}: the output must be .csv or .jsonl")
    return suffix[1:]


def format_rows(rows: Sequence[dict], fmt: str, header: bool) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    if header:
        writer.writeheader()
    for r in rows:
        flat = {**r, "flags": ";".join(r.get("flags", [])),
                "matches": ";".join(f"{m['product_id']}:{m['score']:.4f}" for m in r.get("matches", []))}
        writer.writerow({k: ("" if v is None else v) for k, v in flat.items()})
    return buf.getvalue()


def write_output(path: Path, rows: Sequence[dict]) -> None:
    """Replace the output with `rows`, atomically."""
    fmt = output_format(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        f.write(format_rows(rows, fmt, header=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_output(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "a", newline="") as f:
        f.write(format_rows(rows, output_format(path), header=False))
        f.flush()


# ---------------------------------------------------------------------------------------------- duplicates
def duplicate_groups(keys: list[str], embeddings: np.ndarray, threshold: float,
                     layouts: np.ndarray | None = None, layout_threshold: float = 0.0) -> dict[str, int]:
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


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class TagSummary:
    total: int
    done: int
    tagged_now: int
    unreadable: int
    duplicate_groups: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.tagged_now / self.seconds if self.seconds else 0.0


class Tagger:
    def __init__(self, embedder: Embedder, matcher: Matcher | None = None, options: TagOptions = TagOptions(),
                 limits: Limits = Limits(), start_method: str | None = None):
        self.plan = embedder.bulk_plan()
        self.workers = options.workers or self.plan.workers
        # "fork" (the CLI default on POSIX) starts workers instantly; a threaded server, and a runtime whose
        # client library cannot cross a fork (gRPC), must use "spawn".
        self.start_method = start_method or ("fork" if os.name == "posix" and self.plan.fork_safe else "spawn")
        if self.start_method == "fork":
            # Imports torch here, once: forked workers inherit it. Otherwise each would spend 1.2 s on the
            # import at the start of every run before its first batch.
            torch_resize(threads=None)
        self.matcher = matcher
        self.options = options
        self.limits = limits
        self.manifest = embedder.manifest

    def run(self, items: Sequence[Item], out: Path, progress: Callable[[int, int], None] | None = None,
            should_stop: Callable[[], bool] | None = None, source: str = "") -> TagSummary:
        """Tag `items` into `out`; resumes from `out`'s state file. Raises KeyboardInterrupt after leaving a
        valid partial output when interrupted; returns early (state kept) when `should_stop()` says so."""
        output_format(out)
        started = time.perf_counter()
        state = TagState(out.with_name(out.name + ".state.sqlite3"))
        try:
            state.check_meta(source=source, model=f"{self.manifest.model_id}:{self.manifest.version}")
            done = state.done_keys()
            write_output(out, state.rows())  # the output agrees with the state before anything is appended
            order = {item.key: i for i, item in enumerate(items)}
            todo = [item for item in items if item.key not in done]
            finished = len(items) - len(todo)
            if progress:
                progress(finished, len(items))
            tagged = unreadable = 0
            try:
                for rows in self._batches(todo, order, should_stop):
                    state.add(rows)
                    append_output(out, [r for _, _, r, _, _ in rows])
                    tagged += len(rows)
                    unreadable += sum(r["status"] != "ok" for _, _, r, _, _ in rows)
                    if progress:
                        progress(finished + tagged, len(items))
            except KeyboardInterrupt:
                write_output(out, state.rows())
                raise
            complete = len(state.done_keys()) >= len(items)
            groups = 0
            if complete:
                keys, vectors, layouts = state.embeddings()
                found = duplicate_groups(keys, vectors, self.options.duplicate_threshold, layouts, self.options.layout_threshold)
                write_output(out, state.set_groups(found))
                groups = len(set(found.values()))
            else:
                write_output(out, state.rows())
            return TagSummary(len(items), finished + tagged, tagged, unreadable, groups, time.perf_counter() - started)
        finally:
            state.close()

    def _batches(self, todo: Sequence[Item], order: dict[str, int], should_stop):
        """Rows per batch, in input order: the workers decode and embed batches while this process matches
        and writes the ones they finished. A stop ends the run at once: the batches still with the workers
        are dropped, and a rerun does them.

        A worker that dies (a photo that crashes a decoder, the system killing it) breaks the pool, and so does
        a batch that stalls (`stall_timeout_s`: the workers are then killed). The batches that were with the
        workers are then redone photo by photo, each alone in a fresh pool: a photo that kills or stalls its
        worker again is reported unreadable, the rest are tagged. Workers that fail on 3 photos in a row mean
        something else is wrong: the run stops with an error, blaming none of them, so that a rerun tries
        them again.
        """
        options = self.options
        ahead = max(self.workers + 1, -(-options.read_ahead // options.batch))  # batches out with the workers
        waiting = deque(todo[at: at + options.batch] for at in range(0, len(todo), options.batch))
        suspects: deque[Item] = deque()  # photos of batches lost with a worker, to redo one by one
        in_flight: deque[tuple[list[Item], Future, bool]] = deque()  # (batch, its result, alone in the pool)
        blamed: list = []  # rows of photos that killed their worker when alone in it, the last ones in a row
        pool = self._pool()
        try:
            while waiting or suspects or in_flight:
                if suspects:
                    if not in_flight:  # alone in the pool, so that a crash names its photo
                        batch = [suspects.popleft()]
                        in_flight.append((batch, pool.submit(tag_batch, batch), True))
                else:
                    while waiting and len(in_flight) < ahead:
                        batch = waiting.popleft()
                        in_flight.append((batch, pool.submit(tag_batch, batch), False))
                batch, future, alone = in_flight.popleft()
                try:
                    result = self._result(future, should_stop)
                    if result is None:
                        break
                    analysed, out = result
                except (BrokenProcessPool, _Stalled) as failure:
                    _kill_workers(pool)
                    pool = self._pool()
                    if not alone:
                        lost = [batch, *(b for b, _, _ in in_flight)]
                        in_flight.clear()
                        suspects.extendleft(reversed([item for b in lost for item in b]))
                        continue
                    if len(blamed) == 2:
                        raise RuntimeError("tagging workers failed on 3 photos in a row, each alone in its worker (died or "
                                           "stalled); the photos tagged so far are kept, run again to resume") from None
                    error = ("its worker process died while decoding or embedding it" if isinstance(failure, BrokenProcessPool)
                             else f"decoding and embedding it took longer than {self.options.stall_timeout_s:g} s; "
                                  "its worker process was stopped")
                    blamed += self._rows([(batch[0], {"status": "unreadable", "flags": ["unreadable"], "error": error})],
                                         None, order)
                    continue
                # A photo is blamed for its worker's death only once a fresh worker has tagged another one.
                yield blamed + self._rows(analysed, out, order)
                blamed = []
                if should_stop and should_stop():
                    break
            else:  # ran to the end, not stopped: the last photo blamed has no later one to wait for
                if blamed:
                    yield blamed
                pool.shutdown(wait=True)
        finally:
            # Stopped, interrupted or failed: the batches still with the workers are dropped, so the workers
            # are too, at once. Left to finish, a stalled one would also hold up the exit of this process.
            _kill_workers(pool)

    def _result(self, future: Future, should_stop) -> tuple | None:
        """A batch's result, waited for in short slices so that a stop is seen while a worker is busy; None
        on a stop; `_Stalled` when the workers have held it `stall_timeout_s` (counted from the moment it is
        the oldest batch: the pool runs batches in order, so by then it has been with a worker at least
        that long)."""
        deadline = time.monotonic() + self.options.stall_timeout_s
        while True:
            try:
                return future.result(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except TimeoutError:
                if should_stop and should_stop():
                    return None
                if time.monotonic() >= deadline:
                    raise _Stalled from None

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, multiprocessing.get_context(self.start_method), initializer=_init_worker,
                                   initargs=(self.manifest.input.spec(), self.limits, self.options, self.plan.factory))

    def _rows(self, analysed: list[tuple[Item, dict]], out: EmbedderOutput | None, order: dict[str, int]):
        fine_labels, coarse_labels = self.manifest.fine_labels, self.manifest.coarse_labels
        rows, i = [], 0
        for item, info in analysed:
            if info["status"] != "ok":
                rows.append((item.key, order[item.key], {"path": item.key, **info, "duplicate_group": None}, None, None))
                continue
            info = dict(info)
            layout = info.pop("_layout")
            f, c = int(out.fine_probs[i].argmax()), int(out.coarse_probs[i].argmax())
            matches = self.matcher(out.embedding[i], out.fine_probs[i], self.options.k) if self.matcher else []
            row = {
                "path": item.key, "status": "ok",
                "fine": fine_labels[f], "fine_probability": round(float(out.fine_probs[i, f]), 4),
                "coarse": coarse_labels[c], "coarse_probability": round(float(out.coarse_probs[i, c]), 4),
                "matches": [{"product_id": pid, "score": round(score, 4)} for pid, score in matches],
                "duplicate_group": None, **info,
            }
            rows.append((item.key, order[item.key], row, out.embedding[i], layout))
            i += 1
        return rows
