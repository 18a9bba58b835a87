"""In-process dynamic batching: concurrent embed calls on the real ONNX model coalesce into one run, each caller
gets exactly its own rows, and one bad call fails alone."""

import threading
import time

import numpy as np
import pytest

from api.settings import REPO_ROOT
from vision.preprocess import load_image
from vision.runtimes import create_embedder
from vision.runtimes.batching import CoalescingEmbedder
from vision.runtimes.onnx import OnnxRuntimeEmbedder

MODEL_DIR = REPO_ROOT / "triton_models" / "product_embedder"
QUERIES = sorted((REPO_ROOT / "samples" / "queries").glob("*.jpg"))


class HeldFirstRun:
    """The real embedder, recording the batch size of every run; the first run waits until `hold` more
    calls have queued behind it, so that the test knows they coalesce."""

    def __init__(self, inner: OnnxRuntimeEmbedder, hold: int):
        self.inner, self.manifest, self.hold = inner, inner.manifest, hold
        self.runs: list[int] = []
        self.coalescer: CoalescingEmbedder | None = None

    def embed(self, pixels):
        if not self.runs:
            deadline = time.monotonic() + 30
            while len(self.coalescer._queue) < self.hold and time.monotonic() < deadline:
                time.sleep(0.005)
        self.runs.append(len(pixels))
        return self.inner.embed(pixels)


@pytest.fixture(scope="module")
def model():
    embedder = OnnxRuntimeEmbedder(MODEL_DIR, threads=1)
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def photos(model):
    spec = model.manifest.input.spec()
    return [load_image(p.read_bytes(), spec)[None] for p in QUERIES]


def call_concurrently(embedder, inputs):
    results, errors = [None] * len(inputs), [None] * len(inputs)

    def one(i):
        try:
            results[i] = embedder.embed(inputs[i])
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            errors[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
        time.sleep(0.01)  # the first one is running (held) before the others queue
    for t in threads:
        t.join(60)
    return results, errors


def test_concurrent_calls_coalesce_and_each_gets_its_own_rows(model, photos):
    spy = HeldFirstRun(model, hold=7)
    coalescer = spy.coalescer = CoalescingEmbedder(spy, max_batch=16)
    inputs = photos[:8]
    results, errors = call_concurrently(coalescer, inputs)
    assert errors == [None] * 8
    assert spy.runs == [1, 7]  # the first alone, then everything that queued meanwhile, in one run
    for pixels, out in zip(inputs, results):
        alone = model.embed(pixels)
        assert out.embedding.shape == (1, model.manifest.embedding_dim)
        np.testing.assert_allclose(out.embedding, alone.embedding, atol=1e-4)
        np.testing.assert_allclose(out.fine_probs, alone.fine_probs, atol=1e-4)
        np.testing.assert_allclose(out.coarse_probs, alone.coarse_probs, atol=1e-4)


def test_max_batch_bounds_a_coalesced_run(model, photos):
    spy = HeldFirstRun(model, hold=6)
    coalescer = spy.coalescer = CoalescingEmbedder(spy, max_batch=4)
    big = np.concatenate(photos[:6])  # one call larger than max_batch still runs, alone
    results, errors = call_concurrently(coalescer, [photos[0], *photos[1:6], big])
    assert errors == [None] * 7
    assert spy.runs == [1, 4, 1, 6]
    assert results[-1].embedding.shape == (6, model.manifest.embedding_dim)


def test_a_bad_call_fails_alone(model, photos):
    spy = HeldFirstRun(model, hold=4)
    coalescer = spy.coalescer = CoalescingEmbedder(spy, max_batch=16)
    wrong = np.zeros((1, 32, 32, 3), np.uint8)  # not the model's input size
    results, errors = call_concurrently(coalescer, [photos[0], photos[1], wrong, photos[2], photos[3]])
    assert [type(e) for e in errors] == [type(None), type(None), ValueError, type(None), type(None)]
    assert all(r is not None for i, r in enumerate(results) if i != 2)
    np.testing.assert_allclose(results[3].embedding, model.embed(photos[2]).embedding, atol=1e-4)


def test_the_service_setting_picks_it():
    assert isinstance(create_embedder("onnx", MODEL_DIR, max_batch=16), CoalescingEmbedder)
    assert isinstance(create_embedder("onnx", MODEL_DIR, max_batch=1), OnnxRuntimeEmbedder)
