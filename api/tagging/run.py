"""Bulk tagging: every photo of a folder, zip or CSV gets categories, catalogue matches, a near-duplicate
group and quality flags. This module is the run itself: it hands batches to the worker processes
(api/tagging/workers.py), watches them for crashes and stalls, matches their results against the catalogue
and writes them (api/tagging/state.py, api/tagging/output.py); duplicate groups are found at the end
(api/tagging/duplicates.py).

Progress lives in a SQLite state file next to the output: a rerun skips what is done and a kill at any
moment loses at most the batches in flight.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from api.catalog.ranking import CatalogueMatches
from api.tagging.duplicates import duplicate_groups
from api.tagging.options import TagOptions
from api.tagging.output import append_output, output_format, write_output
from api.tagging.sources import Item
from api.tagging.state import SqlTagState, TagState
from api.tagging.workers import WorkerPool
from vision.preprocess import Limits, torch_resize
from vision.runtimes import Detector, Embedder, EmbedderOutput

__all__ = ["Matcher", "TagOptions", "TagSummary", "Tagger"]
Matcher = Callable[[np.ndarray, np.ndarray, int], CatalogueMatches]  # CatalogService.tag_matcher()
FAILURES_IN_A_ROW = 3  # photos that each fail alone in a fresh worker before the run blames the workers
OBJECT_SLOTS = 16  # with objects, a photo's rows sort at order x 16 (the photo), + 1, + 2... (its products)


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


class _Stalled(Exception):
    """A batch outlived TagOptions.stall_timeout_s with the workers."""


class Tagger:
    def __init__(
        self,
        embedder: Embedder,
        matcher: Matcher | None = None,
        options: TagOptions = TagOptions(),
        limits: Limits = Limits(),
        start_method: str | None = None,
        detector_factory: Callable[[], Detector] | None = None,
    ):
        if options.objects and detector_factory is None:
            raise ValueError("tagging with objects needs a product detector")
        self.plan = embedder.bulk_plan()
        self.detector_factory = detector_factory if options.objects else None
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

    def run(
        self,
        items: Sequence[Item],
        out: Path,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        source: str = "",
        state: TagState | SqlTagState | None = None,
    ) -> TagSummary:
        """Tag `items` into `out`; resumes from `state` (by default `out`'s state file). Raises
        KeyboardInterrupt after leaving a valid partial output when interrupted; returns early (state kept)
        when `should_stop()` says so."""
        output_format(out)
        started = time.perf_counter()
        state = state if state is not None else TagState(out.with_name(out.name + ".state.sqlite3"))
        try:
            state.check_meta(source=source, model=self.manifest.served_id, objects=str(self.options.objects))
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
                    photos = [r for _, _, r, _, _ in rows if "object" not in r]  # not the products found in them
                    tagged += len(photos)
                    unreadable += sum(r["status"] != "ok" for r in photos)
                    if progress:
                        progress(finished + tagged, len(items))
            except KeyboardInterrupt:
                write_output(out, state.rows())
                raise
            groups = self._finish(state, out, complete=set(order) <= state.done_keys())
            return TagSummary(len(items), finished + tagged, tagged, unreadable, groups, time.perf_counter() - started)
        finally:
            state.close()

    def _finish(self, state: TagState | SqlTagState, out: Path, complete: bool) -> int:
        """Rewrite the output from the state; with every photo done, with its duplicate groups (their count)."""
        if not complete:
            write_output(out, state.rows())
            return 0
        keys, vectors, layouts = state.embeddings()
        options = self.options
        found = duplicate_groups(keys, vectors, options.duplicate_threshold, layouts, options.layout_threshold)
        write_output(out, state.set_groups(found))
        return len(set(found.values()))

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
        waiting = deque(todo[at : at + options.batch] for at in range(0, len(todo), options.batch))
        suspects: deque[Item] = deque()  # photos of batches lost with a worker, to redo one by one
        in_flight: deque[tuple[list[Item], Future, bool]] = deque()  # (batch, its result, alone in the pool)
        blamed: list = []  # rows of photos that killed their worker when alone in it, the last ones in a row
        pool = self._pool()
        try:
            while waiting or suspects or in_flight:
                if suspects:
                    if not in_flight:  # alone in the pool, so that a crash names its photo
                        batch = [suspects.popleft()]
                        in_flight.append((batch, pool.submit(batch), True))
                else:
                    while waiting and len(in_flight) < ahead:
                        batch = waiting.popleft()
                        in_flight.append((batch, pool.submit(batch), False))
                batch, future, alone = in_flight.popleft()
                try:
                    result = self._result(future, should_stop)
                except (BrokenProcessPool, _Stalled) as failure:
                    pool.kill()
                    pool = self._pool()
                    if alone:
                        blamed += self._blame(batch[0], failure, order, len(blamed))
                    else:
                        lost = [batch, *(b for b, _, _ in in_flight)]
                        in_flight.clear()
                        suspects.extendleft(reversed([item for b in lost for item in b]))
                    continue
                if result is None:
                    break
                # A photo is blamed for its worker's death only once a fresh worker has tagged another one.
                yield blamed + self._rows(*result, order)
                blamed = []
                if should_stop and should_stop():
                    break
            else:  # ran to the end, not stopped: the last photo blamed has no later one to wait for
                if blamed:
                    yield blamed
                pool.shutdown()
        finally:
            # Stopped, interrupted or failed: the batches still with the workers are dropped, so the workers
            # are too, at once. Left to finish, a stalled one would also hold up the exit of this process.
            pool.kill()

    def _blame(self, item: Item, failure: Exception, order: dict[str, int], in_a_row: int) -> list:
        """The row of a photo that failed alone in its worker: unreadable, saying how. Raises when it is the
        third in a row: then the workers, not the photos, are the likelier cause."""
        if in_a_row + 1 >= FAILURES_IN_A_ROW:
            raise RuntimeError(
                f"tagging workers failed on {FAILURES_IN_A_ROW} photos in a row, each alone in its worker "
                "(died or stalled); the photos tagged so far are kept, run again to resume"
            ) from None
        if isinstance(failure, BrokenProcessPool):
            error = "its worker process died while decoding or embedding it"
        else:
            error = (
                f"decoding and embedding it took longer than {self.options.stall_timeout_s:g} s; "
                "its worker process was stopped"
            )
        return self._rows([(item, {"status": "unreadable", "flags": ["unreadable"], "error": error})], None, order)

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

    def _pool(self) -> WorkerPool:
        spec = self.manifest.input.spec()
        factory, detector = self.plan.factory, self.detector_factory
        return WorkerPool(self.workers, self.start_method, spec, self.limits, self.options, factory, detector)

    def _rows(self, analysed: list[tuple[Item, dict]], out: EmbedderOutput | None, order: dict[str, int]):
        """(key, order, row, embedding, layout) of each photo and, with objects, of each product found in it
        after its photo (key `path#N`; no embedding: duplicates are photos)."""
        rows, i = [], 0
        crop_row = sum(info["status"] == "ok" for _, info in analysed)  # the crops' outputs follow the photos'
        per = OBJECT_SLOTS if self.options.objects else 1
        for item, info in analysed:
            position = order[item.key] * per
            if info["status"] != "ok":
                rows.append((item.key, position, {"path": item.key, **info, "duplicate_group": None}, None, None))
                continue
            info = dict(info)
            layout = info.pop("_layout")
            boxes = info.pop("_objects", None)
            row = {"path": item.key, "status": "ok", **self._tags(out, i), "duplicate_group": None, **info}
            if boxes is not None:
                row["objects"] = len(boxes)
            rows.append((item.key, position, row, out.embedding[i], layout))
            i += 1
            for j, box in enumerate(boxes or [], start=1):
                found = {"path": item.key, "status": "ok", "object": j, **self._tags(out, crop_row)}
                found |= {"box": [round(v, 4) for v in box.as_array().tolist()], "object_score": round(box.score, 4)}
                rows.append((f"{item.key}#{j}", position + j, found, None, None))
                crop_row += 1
        return rows

    def _tags(self, out: EmbedderOutput, i: int) -> dict:
        """Categories and catalogue matches of row `i` of the model's outputs (a photo or a product in one)."""
        fine_labels, coarse_labels = self.manifest.fine_labels, self.manifest.coarse_labels
        f, c = int(out.fine_probs[i].argmax()), int(out.coarse_probs[i].argmax())
        found = self.matcher(out.embedding[i], out.fine_probs[i], self.options.k) if self.matcher else None
        return {
            "fine": fine_labels[f],
            "fine_probability": round(float(out.fine_probs[i, f]), 4),
            "coarse": coarse_labels[c],
            "coarse_probability": round(float(out.coarse_probs[i, c]), 4),
            "matches": [{"product_id": pid, "score": round(score, 4)} for pid, score in found.matches] if found else [],
            "matched": found.matched if found else None,
            "match_confidence": round(found.confidence, 4) if found else None,
        }
