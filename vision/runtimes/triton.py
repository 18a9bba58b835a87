"""The embedder and the shopper model on a Triton Inference Server (`SEESKU_INFERENCE=triton://host:8001`).

Async gRPC through tritonclient on one event loop of its own: the service's worker threads call the plain
`embed` and wait, while every in-flight request shares one HTTP/2 channel, so concurrent uploads reach
Triton together and its dynamic batcher can merge them. Photos cross the wire as uint8 (the graph
normalises), each call has a deadline, and a failed call is retried a bounded number of times before the
caller gets `EmbedderUnavailable` (the API answers 503).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from vision import detection
from vision.detection import Box, DetectorManifest
from vision.manifest import INPUT_NAME, OUTPUT_NAMES, ModelManifest
from vision.recommender import Event, RecommenderManifest, encode
from vision.runtimes import BulkPlan, EmbedderOutput, EmbedderUnavailable

# gRPC codes worth another try: the server restarting, a dropped connection, a full queue, a late answer.
RETRYABLE = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.CANCELLED",
}
HEALTH_CACHE_S = 1.0


def parse_url(inference: str) -> str:
    """'triton://host:8001' -> 'host:8001'."""
    address = inference.removeprefix("triton://").rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected triton://HOST:GRPC_PORT, got {inference!r}")
    return address


class _TritonClient:
    """One async gRPC client on an event loop of its own, with deadlines and bounded retries."""

    def __init__(self, url: str, timeout_s: float = 5.0, retries: int = 2):
        self.url = parse_url(url)
        self.timeout_s = timeout_s
        self.retries = retries
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="triton-grpc", daemon=True)
        self._thread.start()
        self._client = None
        self._lock = threading.Lock()
        self._health: tuple[float, str | None] = (0.0, "not connected to Triton yet")

    def _run(self, coroutine, timeout_s: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _get_client(self):
        if self._client is None:
            from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
            from tritonclient.grpc.aio import InferenceServerClient

            self._client = InferenceServerClient(
                self.url,
                channel_args=[
                    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
                    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
                    # After Triton restarts, reconnect within a second or so, not gRPC's default of up to 2 min.
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
        return self._client

    async def _infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """One inference with its deadline, retried while the server cannot answer; EmbedderUnavailable when
        it still cannot, RuntimeError for any other failure."""
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        client = await self._get_client()
        tensors = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            tensors.append(tensor)
        requested = [InferRequestedOutput(name) for name in outputs]
        for attempt in range(self.retries + 1):
            try:
                result = await client.infer(model, tensors, outputs=requested, client_timeout=self.timeout_s)
                self._health = (time.monotonic(), None)
                return [result.as_numpy(name) for name in outputs]
            except InferenceServerException as exc:
                if exc.status() not in RETRYABLE or attempt == self.retries:
                    reason = f"Triton at {self.url} failed: {_message(exc)}"
                    if exc.status() in RETRYABLE:
                        self._health = (time.monotonic(), reason)
                        raise EmbedderUnavailable(reason) from None
                    raise RuntimeError(reason) from None
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def _ready(self, model: str) -> None:
        client = await self._get_client()
        try:
            ready = await client.is_model_ready(model, client_timeout=min(self.timeout_s, 1.0))
        except Exception as exc:
            raise EmbedderUnavailable(f"Triton at {self.url} unreachable: {_message(exc)}") from None
        if not ready:
            raise EmbedderUnavailable(f"Triton at {self.url} has no ready model {model!r}")

    def close(self) -> None:
        if self._client is not None:
            try:
                self._run(self._client.close(), 5)
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class TritonEmbedder(_TritonClient):
    def __init__(
        self,
        url: str,
        model_dir: str | Path,
        model_name: str = "product_embedder",
        timeout_s: float = 5.0,
        retries: int = 2,
    ):
        super().__init__(url, timeout_s, retries)
        self.model_dir = Path(model_dir)
        self.manifest = ModelManifest.load(model_dir)
        self.model_name = model_name
        self.max_batch = 64  # replaced by the model's own max_batch_size on load
        self._checked = False  # the served model's shapes were compared with the manifest

    # -- the Embedder protocol ----------------------------------------------------------------
    def load(self) -> None:
        """Connect and check that the served model is the one the manifest describes.

        Raises EmbedderUnavailable while Triton is unreachable (the service retries for
        SEESKU_INFERENCE_STARTUP_WAIT_S at start-up); ValueError when Triton serves a model of other shapes."""
        with self._lock:
            if not self._checked:
                self._run(self._check(), self.timeout_s * 2)
                self._checked = True

    async def _check(self) -> None:
        client = await self._get_client()
        try:
            if not await client.is_model_ready(self.model_name, client_timeout=self.timeout_s):
                raise EmbedderUnavailable(f"Triton at {self.url} has no ready model {self.model_name!r}")
            config = (await client.get_model_config(self.model_name, as_json=True, client_timeout=self.timeout_s))[
                "config"
            ]
        except EmbedderUnavailable:
            raise
        except Exception as exc:  # connection refused, deadline: tritonclient wraps them all
            raise EmbedderUnavailable(f"Triton at {self.url} unreachable: {_message(exc)}") from None
        self.max_batch = int(config.get("max_batch_size", 0)) or self.max_batch
        want = {
            "embedding": self.manifest.embedding_dim,
            "fine_probs": len(self.manifest.fine_labels),
            "coarse_probs": len(self.manifest.coarse_labels),
        }
        served = {o["name"]: int(o["dims"][-1]) for o in config.get("output", [])}
        if any(served.get(name) != size for name, size in want.items()):
            raise ValueError(f"Triton model {self.model_name!r} outputs {served}, the manifest expects {want}")

    def bulk_plan(self) -> BulkPlan:
        # The model runs on the server: the cores decode, one worker each with its own client, and their
        # batches in flight at once keep Triton's instances busy. gRPC must not be used in a forked child.
        return BulkPlan(
            partial(
                TritonEmbedder,
                self.url,
                self.model_dir,
                self.model_name,
                timeout_s=self.timeout_s,
                retries=self.retries,
            ),
            os.cpu_count() or 1,
            fork_safe=False,
        )

    @property
    def loaded(self) -> bool:
        return self.health() is None

    def health(self) -> str | None:
        """None when Triton answers and the model is ready, else why not (cached for a second)."""
        checked_at, reason = self._health
        if time.monotonic() - checked_at < HEALTH_CACHE_S:
            return reason
        try:
            if self._checked:
                self._run(self._ready(self.model_name), self.timeout_s + 1)
            else:
                self.load()
            reason = None
        except (EmbedderUnavailable, ValueError) as exc:
            reason = str(exc)
        except Exception as exc:  # a wedged loop or a timeout waiting for it
            reason = f"Triton at {self.url}: {_message(exc)}"
        self._health = (time.monotonic(), reason)
        return reason

    def embed(self, pixels: np.ndarray) -> EmbedderOutput:
        size = self.manifest.input.size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 (N, {size}, {size}, 3), got {pixels.dtype} {pixels.shape}")
        if not self._checked:
            self.load()
        # Each chunk has its own deadline and retries; the wait here covers them all with some slack.
        chunks = [pixels[i : i + self.max_batch] for i in range(0, len(pixels), self.max_batch)]
        wait_s = len(chunks) * (self.retries + 1) * (self.timeout_s + 0.5) + 1
        parts = self._run(self._infer_all(chunks), wait_s)
        return EmbedderOutput(*(np.concatenate([p[i] for p in parts]) for i in range(len(OUTPUT_NAMES))))

    async def _infer_all(self, chunks: list[np.ndarray]) -> list[list[np.ndarray]]:
        return await asyncio.gather(*(self._infer(self.model_name, {INPUT_NAME: c}, OUTPUT_NAMES) for c in chunks))


class TritonShopperScorer(_TritonClient):
    """The shopper model served by Triton (`user_recommender`): the history goes over the wire as three small
    int64 tensors, the scores come back for every product of the vocabulary."""

    def __init__(
        self,
        url: str,
        model_dir: str | Path,
        model_name: str = "user_recommender",
        timeout_s: float = 5.0,
        retries: int = 2,
    ):
        super().__init__(url, timeout_s, retries)
        self.manifest = RecommenderManifest.load(model_dir)
        self.model_name = model_name
        self.index = {p: i + 1 for i, p in enumerate(self.manifest.vocabulary)}

    def load(self) -> None:
        self._run(self._ready(self.model_name), self.timeout_s + 1)

    def scores(self, history: Sequence[Event]) -> dict[str, float]:
        inputs = encode(history, self.index, self.manifest.max_len)
        if inputs is None:
            return {}
        wait_s = (self.retries + 1) * (self.timeout_s + 0.5) + 1
        (scores,) = self._run(self._infer(self.model_name, inputs, ["scores"]), wait_s)
        return dict(zip(self.manifest.vocabulary, scores[0, 1:].tolist()))


class TritonDetector(_TritonClient):
    """The product detector served by Triton (`product_detector`: TensorRT or ONNX Runtime on the GPU); the
    boxes are decoded here, as in-process (vision.detection.decode_detections)."""

    def __init__(
        self,
        url: str,
        model_dir: str | Path,
        model_name: str = "product_detector",
        timeout_s: float = 5.0,
        retries: int = 2,
    ):
        super().__init__(url, timeout_s, retries)
        self.manifest = DetectorManifest.load(model_dir)
        self.model_name = model_name

    def load(self) -> None:
        self._run(self._ready(self.model_name), self.timeout_s + 1)

    def detect(self, pixels: np.ndarray, threshold: float | None = None) -> list[list[Box]]:
        wait_s = (self.retries + 1) * (self.timeout_s + 0.5) + 1
        inputs = {detection.INPUT_NAME: pixels}
        scores, boxes = self._run(self._infer(self.model_name, inputs, detection.OUTPUT_NAMES), wait_s)
        return self.manifest.decode(scores, boxes, threshold)


def _message(exc: BaseException) -> str:
    text = getattr(exc, "message", None)
    text = text() if callable(text) else text
    return (text or str(exc) or type(exc).__name__).splitlines()[0][:300]
