"""Bulk tagging: every photo of a folder, zip or CSV gets categories, catalogue matches, a near-duplicate
group and quality flags.

Decoding runs in worker processes (`vision.preprocess`, the same transform as search) while the main
process embeds full batches, so the run is bound by the model. Workers hand their pixels over in shared
memory (`PixelSlots`), not through the pool's pipe. Progress lives in a SQLite state file next
to the output (`<out>.state.sqlite3`): each batch is one transaction, so a rerun skips what is done and a
kill at any moment loses at most the batch in flight. The output itself is appended batch by batch (a
valid partial file at any time) and rewritten at the end, atomically, with the duplicate groups, which
need every embedding of the run.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import queue
import sqlite3
import time
import zipfile
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import cv2
import faiss
import numpy as np

from api.tagging.sources import Item
from vision.preprocess import ImageError, InputSpec, Limits, decode_opened, open_image, to_model_input, torch_resize
from vision.runtimes import Embedder

CSV_COLUMNS = [
    "path", "status", "fine", "fine_probability", "coarse", "coarse_probability", "matches",
    "duplicate_group", "flags", "blur_variance", "width", "height", "error",
]
Matcher = Callable[[np.ndarray, np.ndarray, int], list[tuple[str, float]]]


@dataclass(frozen=True, kw_only=True)  # by name only: a positional call once put every threshold one field off
class TagOptions:
    k: int = 3  # catalogue matches per photo
    batch: int = 32
    workers: int = 1  # decode processes; the model uses the remaining cores
    read_ahead: int = 128  # photos decoded ahead of the model at most (shared memory: 150 KB each at 224 px)
    # Near-duplicates need both: the same thing (embedding cosine) AND the same picture (layout correlation).
    # The embedding alone cannot tell a re-encoded copy from another photo of the same product: fine-tuning
    # made those close on purpose (measured in bench/tagging.py).
    duplicate_threshold: float = 0.90
    layout_threshold: float = 0.92  # both chosen on a folder generated with another seed than the bench's
    blur_threshold: float = 60.0  # variance of the Laplacian of the model input below which a photo is blurry
    min_side: int = 64  # photos with a shorter side are flagged too small


# ---------------------------------------------------------------------------------------------- workers
_worker: dict = {}


def _init_worker(spec: InputSpec, limits: Limits, options: TagOptions, slots_name: str, slots_shape: tuple[int, ...]) -> None:
    cv2.setNumThreads(1)
    memory = shared_memory.SharedMemory(slots_name)  # the main process owns it and unlinks it
    _worker.update(spec=spec, limits=limits, options=options, zips={}, memory=memory, resize=torch_resize(),
                   slots=np.ndarray(slots_shape, np.uint8, buffer=memory.buf))


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


def analyse_into_slot(task: tuple[Item, int]) -> tuple[Item, int, dict]:
    """`analyse` into shared-memory slot `slot`: only the slot number travels back."""
    item, slot = task
    item, info = analyse(item, _worker["slots"][slot])
    return item, slot, info


class PixelSlots:
    """Model-input slots in shared memory, lent to decode workers one photo at a time.

    A worker writes a photo's pixels (150 KB at 224 px) into its slot and returns only the slot number; the
    main process copies them straight into the batch. Through the pool's pipe every photo was pickled,
    sent, received and unpickled: on 1,000 bench photos (model stubbed out) the main process's CPU fell from
    0.89 to 0.54 ms per photo, time the model's threads get back. Handing out slots also bounds how far
    decoding runs ahead: `take` blocks while every slot is in use.
    """

    def __init__(self, count: int, shape: tuple[int, ...]):
        self.shape = (count, *shape)
        self.memory = shared_memory.SharedMemory(create=True, size=int(np.prod(self.shape)))
        self.array = np.ndarray(self.shape, np.uint8, buffer=self.memory.buf)
        self._free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        for slot in range(count):
            self._free.put(slot)

    def take(self) -> int | None:
        """A free slot, waiting for one; None once `stop` was called."""
        return self._free.get()

    def release(self, slot: int) -> None:
        self._free.put(slot)

    def tasks(self, items: Sequence[Item]):
        """(item, slot) for each item while slots last: the pool's task feeder blocks here, not on memory."""
        for item in items:
            slot = self.take()
            if slot is None:
                return
            yield item, slot

    def stop(self) -> None:
        """Wake a feeder waiting in `take`: it stops feeding (the pool's terminate waits for it)."""
        self._free.put(None)

    def close(self) -> None:
        """Free the memory, once no worker writes to it."""
        del self.array
        self.memory.close()
        self.memory.unlink()


def layout_vector(gray: np.ndarray) -> np.ndarray:
    """16x16 grey thumbnail, mean-centred and L2-normalised: the dot product of two is their correlation,
    unchanged by resizing, re-encoding and brightness, and low for another shot of the same product."""
    small = cv2.resize(gray, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    small -= small.mean()
    return small / (np.linalg.norm(small) + 1e-6)


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

    def set_groups(self, groups: dict[str, int]) -> None:
        with self.db:
            for key, row in list(self.db.execute("SELECT key, row FROM photos")):
                data = json.loads(row)
                data["duplicate_group"] = groups.get(key)
                self.db.execute("UPDATE photos SET row = ? WHERE key = ?", (json.dumps(data), key))

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
    lims, _, ids = index.range_search(np.ascontiguousarray(embeddings, dtype=np.float32), threshold)
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
        # "fork" (the CLI default on POSIX) starts workers instantly; a threaded server must use "spawn".
        self.start_method = start_method or ("fork" if os.name == "posix" else "spawn")
        if self.start_method == "fork":
            # Imports torch here, once: forked decode workers inherit it. Otherwise each would spend 1.2 s on the
            # import at the start of every run while the model waits for its first batch.
            torch_resize(threads=None)
        self.embedder, self.embed_concurrency = embedder.for_bulk()
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
                state.set_groups(found)
                groups = len(set(found.values()))
            write_output(out, state.rows())
            return TagSummary(len(items), finished + tagged, tagged, unreadable, groups, time.perf_counter() - started)
        finally:
            state.close()

    def _batches(self, todo: Sequence[Item], order: dict[str, int], should_stop):
        """Rows per batch, pipelined: the decoder processes decode ahead; `embed_concurrency` batches are
        embedded at once on threads of their own (ONNX Runtime and the gRPC client release the GIL); this
        thread matches the oldest finished batch against the catalogue while the caller writes its rows."""
        options = self.options
        spec = self.manifest.input.spec()
        chunk = 16  # photos per pool message: fewer wake-ups of the main process (0.3 -> 0.2 ms CPU per photo vs 4)
        slots = PixelSlots(max(options.read_ahead, 2 * options.workers * chunk), (spec.size, spec.size, 3))
        ctx = multiprocessing.get_context(self.start_method)
        try:
            pool = ctx.Pool(options.workers, _init_worker, (spec, self.limits, options, slots.memory.name, slots.shape))
        except BaseException:
            slots.close()  # no worker started: nothing else would unlink the shared memory
            raise
        embedding = ThreadPoolExecutor(self.embed_concurrency, thread_name_prefix="tag-embed")
        in_flight: deque = deque()  # (batch, rows of photos that did not decode, future of its embeddings)

        def start(batch, pixels, rejects) -> None:
            future = embedding.submit(self.embedder.embed, pixels[: len(batch)]) if batch else None
            in_flight.append((batch, rejects, future))

        try:
            pending: list[tuple[Item, dict]] = []
            pixels = np.empty((options.batch, spec.size, spec.size, 3), np.uint8)
            bad: list[tuple[str, int, dict, None, None]] = []
            for item, slot, info in pool.imap(analyse_into_slot, slots.tasks(todo), chunksize=chunk):
                if info["status"] != "ok":
                    bad.append((item.key, order[item.key], {"path": item.key, **info, "duplicate_group": None}, None, None))
                else:
                    pixels[len(pending)] = slots.array[slot]
                    pending.append((item, info))
                slots.release(slot)
                if len(pending) >= options.batch:
                    start(pending, pixels, bad)
                    pending, bad = [], []
                    pixels = np.empty_like(pixels)  # the embedding thread still reads the last one
                    while len(in_flight) > self.embed_concurrency:
                        yield self._finish(*in_flight.popleft(), order)
                    if should_stop and should_stop():
                        break
            else:
                if pending or bad:
                    start(pending, pixels, bad)
            while in_flight:  # also on a stop: batches already embedding are not thrown away
                yield self._finish(*in_flight.popleft(), order)
        finally:
            embedding.shutdown(wait=True, cancel_futures=True)
            slots.stop()
            pool.terminate()
            pool.join()
            slots.close()

    def _finish(self, batch, rejects, future, order: dict[str, int]):
        return (self._rows(batch, future.result(), order) if future is not None else []) + rejects

    def _rows(self, batch: list[tuple[Item, dict]], out, order: dict[str, int]):
        fine_labels, coarse_labels = self.manifest.fine_labels, self.manifest.coarse_labels
        rows = []
        for i, (item, info) in enumerate(batch):
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
        return rows
