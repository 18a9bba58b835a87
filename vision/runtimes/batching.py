"""Dynamic batching in-process: concurrent embed calls coalesced into one model run.

Concurrent searches each hand the model one photo. Run as separate ONNX Runtime calls at the same time, they
oversubscribe the cores (every call spreads over all of them) and give up the model's batch efficiency (lite0
here: about 120 images/s at batch 1, 195 at batch 16). So one call runs at a time, and the calls that arrive
while it runs are taken together by the next one: the leader/follower pattern. The first caller runs the model
itself at once, so a lone request pays no queue hop and no waiting; there is no extra thread to manage.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from vision.runtimes import Embedder, EmbedderOutput


class _Call:
    __slots__ = ("pixels", "output", "error", "done")

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.output: EmbedderOutput | None = None
        self.error: BaseException | None = None
        self.done = False


class CoalescingEmbedder:
    """Wraps an in-process embedder; `max_batch` bounds the photos of one coalesced run (a single call with
    more photos still runs, alone)."""

    def __init__(self, inner: Embedder, max_batch: int = 16):
        self.inner = inner
        self.manifest = inner.manifest
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._queue: deque[_Call] = deque()
        self._leading = False

    # -- the Embedder protocol, delegated ------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    def load(self) -> None:
        self.inner.load()

    def health(self) -> str | None:
        return self.inner.health()

    def for_bulk(self) -> tuple[Embedder, int]:
        return self.inner.for_bulk()  # bulk work batches for itself

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close:
            close()

    # -- coalescing ------------------------------------------------------------------------------
    def embed(self, pixels: np.ndarray) -> EmbedderOutput:
        call = _Call(pixels)
        with self._cv:
            self._queue.append(call)
            while self._leading and not call.done:
                self._cv.wait()
            if not call.done:
                self._leading = True
        if not call.done:
            try:
                while not call.done:  # FIFO: our own call is in one of the first batches
                    self._run(self._take())
            finally:
                with self._cv:
                    self._leading = False
                    self._cv.notify_all()  # the next waiter leads what queued up meanwhile
        if call.error is not None:
            raise call.error
        return call.output

    def _take(self) -> list[_Call]:
        with self._cv:
            batch = [self._queue.popleft()]
            photos = len(batch[0].pixels)
            while self._queue and photos + len(self._queue[0].pixels) <= self.max_batch:
                photos += len(self._queue[0].pixels)
                batch.append(self._queue.popleft())
            return batch

    def _run(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                self._settle(batch[0], self.inner.embed(batch[0].pixels))
                return
            out = self.inner.embed(np.concatenate([c.pixels for c in batch]))
            start = 0
            for c in batch:
                end = start + len(c.pixels)
                self._settle(c, EmbedderOutput(out.embedding[start:end], out.fine_probs[start:end], out.coarse_probs[start:end]))
                start = end
        except Exception as exc:  # noqa: BLE001 - handed to the caller it belongs to
            if len(batch) == 1:
                self._settle(batch[0], error=exc)
            else:  # one bad call must not fail the others: run each alone to find whose it is
                for c in batch:
                    self._run([c])
        except BaseException as exc:  # interrupted: nobody may wait for ever on a call already taken
            for c in batch:
                if not c.done:
                    self._settle(c, error=exc)
            raise
        finally:
            with self._cv:
                self._cv.notify_all()

    @staticmethod
    def _settle(call: _Call, output: EmbedderOutput | None = None, error: BaseException | None = None) -> None:
        call.output, call.error, call.done = output, error, True
