"""The tagging worker processes: each takes a batch, decodes it (`vision.preprocess.prepare_photo`, the
same transform as search) and embeds it on its own model session, so each core works on one task at a time.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

import cv2
import numpy as np

from api.tagging.options import TagOptions
from api.tagging.quality import measure
from api.tagging.sources import Item
from vision.preprocess import ImageError, InputSpec, Limits, prepare_photo, torch_resize
from vision.runtimes import Embedder, EmbedderOutput

_worker: dict = {}  # this worker process's spec, limits, options, buffers and embedder


def init_worker(
    spec: InputSpec, limits: Limits, options: TagOptions, embedder_factory: Callable[[], Embedder], pids
) -> None:
    """A worker's start: `pids` (a queue) learns its process id, so that the run can kill it at once."""
    pids.put(os.getpid())
    _exit_with_parent()
    # Ctrl-C reaches the whole process group; the run that owns the workers decides when they stop (the CLI
    # writes its partial output, a server's job runner re-queues its job), not the signal, mid-batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    _worker.update(
        spec=spec,
        limits=limits,
        options=options,
        zips={},
        resize=torch_resize(),
        pixels=np.empty((options.batch, spec.size, spec.size, 3), np.uint8),
    )
    try:
        _worker["embedder"] = embedder_factory()
    except Exception as exc:  # raised from tag_batch instead, where the run reports it; from here it would be lost
        _worker["embedder_error"] = exc


def _exit_with_parent() -> None:
    """A worker outlives a parent killed with SIGKILL (a replica's pod evicted): it would hold a model
    session and a gigabyte of memory for nothing. It watches its parent and exits once it is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def analyse(item: Item, out: np.ndarray) -> tuple[Item, dict]:
    """Decode one photo into `out` (model input) and measure its quality; never raises for a bad photo."""
    try:
        header, out[...] = prepare_photo(
            item.read(_worker["zips"]), _worker["spec"], _worker["limits"], _worker["resize"]
        )
    except (ImageError, OSError, zipfile.BadZipFile, KeyError) as exc:
        return item, {"status": "unreadable", "error": str(exc), "flags": ["unreadable"]}
    return item, measure(out, header.width, header.height, _worker["options"])


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


class WorkerPool:
    """A process pool of tagging workers that can also be killed at once, whatever they are doing (a stop,
    or a worker that hangs). Python 3.14's `ProcessPoolExecutor.kill_workers()` does this; before it the pool
    keeps its processes to itself, so each worker reports its process id at start (`init_worker`)."""

    def __init__(
        self,
        workers: int,
        start_method: str,
        spec: InputSpec,
        limits: Limits,
        options: TagOptions,
        embedder_factory: Callable[[], Embedder],
    ):
        context = multiprocessing.get_context(start_method)
        self._pids = context.SimpleQueue()
        self._executor = ProcessPoolExecutor(
            workers, context, initializer=init_worker, initargs=(spec, limits, options, embedder_factory, self._pids)
        )

    def submit(self, batch: Sequence[Item]) -> Future:
        return self._executor.submit(tag_batch, batch)

    def shutdown(self) -> None:
        """Let the workers finish what they hold, then stop them."""
        self._executor.shutdown(wait=True)

    def kill(self) -> None:
        """Stop every worker now and let the pool go."""
        pids = set()
        while not self._pids.empty():
            pids.add(self._pids.get())
        for process in multiprocessing.active_children():
            if process.pid in pids:
                process.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
