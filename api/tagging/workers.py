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
from vision.detection import find_products
from vision.preprocess import ImageError, InputSpec, Limits, decode, prepare_photo, torch_resize
from vision.runtimes import Detector, Embedder, EmbedderOutput

_worker: dict = {}  # this worker process's spec, limits, options, buffers and embedder


def init_worker(
    spec: InputSpec,
    limits: Limits,
    options: TagOptions,
    embedder_factory: Callable[[], Embedder],
    pids,
    detector_factory: Callable[[], Detector] | None = None,
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
        _worker["detector"] = detector_factory() if options.objects and detector_factory else None
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


def analyse(item: Item, out: np.ndarray, crops: list[np.ndarray]) -> tuple[Item, dict]:
    """Decode one photo into `out` (model input) and measure its quality; with a detector, its products'
    boxes too (`_objects`), their embedder inputs appended to `crops`. Never raises for a bad photo."""
    spec, limits = _worker["spec"], _worker["limits"]
    try:
        data = item.read(_worker["zips"])
        header, out[...] = prepare_photo(data, spec, limits, _worker["resize"])
        detector = _worker.get("detector")
        if detector is not None:
            size = detector.manifest.input.size
            boxes, found = find_products(
                data, decode(data, spec.resize_size, limits), _first(detector), size, spec, limits
            )
    except (ImageError, OSError, zipfile.BadZipFile, KeyError) as exc:
        return item, {"status": "unreadable", "error": str(exc), "flags": ["unreadable"]}
    info = measure(out, header.width, header.height, _worker["options"])
    if detector is not None:
        crops += found
        info["_objects"] = boxes
    return item, info


def _first(detector: Detector) -> Callable[[np.ndarray], list]:
    return lambda pixels: detector.detect(pixels)[0]


def tag_batch(items: Sequence[Item]) -> tuple[list[tuple[Item, dict]], EmbedderOutput | None]:
    """Decode a batch and embed the photos that decoded, in this worker: (item, analysis) of every photo in
    order, and the model's outputs of the readable ones in the same order (None when none was), followed by
    those of their products' crops in the same order (`--objects`)."""
    if "embedder_error" in _worker:
        raise _worker["embedder_error"]
    pixels = _worker["pixels"]
    analysed, readable, crops = [], 0, []
    for item in items:
        analysed.append(analyse(item, pixels[readable], crops))
        readable += analysed[-1][1]["status"] == "ok"
    if not readable:
        return analysed, None
    return analysed, _worker["embedder"].embed(np.concatenate([pixels[:readable], *[c[None] for c in crops]]))


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
        detector_factory: Callable[[], Detector] | None = None,
    ):
        context = multiprocessing.get_context(start_method)
        self._pids = context.SimpleQueue()
        initargs = (spec, limits, options, embedder_factory, self._pids, detector_factory)
        self._executor = ProcessPoolExecutor(workers, context, initializer=init_worker, initargs=initargs)

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
