"""Hostile photos: random and mutated JPEG, PNG, WebP, GIF, TIFF, BMP and HEIC bytes through the one
decoder. Only our typed errors may come out, never another exception, never a hang (each case is bounded
by a timer). `make test` runs 600 cases in the fast suite and 10,000 in the slow one."""

import io
import signal
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vision.preprocess import ImageError, InputSpec, Limits, load_image

SPEC = InputSpec(224, 0.875)
LIMITS = Limits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000)
CASE_SECONDS = 2.0


def _seeds() -> dict[str, bytes]:
    x, y = np.meshgrid(np.linspace(0, 255, 64), np.linspace(0, 255, 48))
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    im = Image.fromarray(rgb)
    seeds = {}
    for fmt, image, kwargs in [
        ("JPEG", im, {"quality": 80}),
        ("PNG", im.convert("RGBA"), {}),
        ("WEBP", im, {"quality": 80}),
        ("GIF", im.convert("P"), {}),
        ("TIFF", im, {}),
        ("BMP", im, {}),
        ("HEIF", im, {"quality": 60}),
    ]:
        buf = io.BytesIO()
        try:
            image.save(buf, fmt, **kwargs)
        except (KeyError, OSError):  # an encoder this Pillow lacks: fuzz the others
            continue
        seeds[fmt] = buf.getvalue()
    return seeds


SEEDS = _seeds()


@st.composite
def hostile_bytes(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=4096))  # noise
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "grow"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[at:]
        elif op == "grow":  # huge declared sizes in headers are the classic pixel flood
            data[at : at + 4] = b"\xff\xff\xff\x7f"
    return bytes(data)


@contextmanager
def time_limit(seconds: float):
    def on_alarm(*_):
        raise TimeoutError(f"decoding took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(data: bytes) -> str:
    with time_limit(CASE_SECONDS):
        try:
            out = load_image(data, SPEC, LIMITS)
        except ImageError as exc:
            return exc.code
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)
    return "decoded"


def fuzz(cases: int) -> dict[str, int]:
    outcomes: dict[str, int] = {}

    @settings(
        max_examples=cases, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
    )
    @given(hostile_bytes())
    def run(data):
        outcome = check(data)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    run()
    return outcomes


def test_seeds_decode():
    assert {"JPEG", "PNG", "WEBP", "GIF", "TIFF", "HEIF"} <= set(SEEDS)
    for data in SEEDS.values():
        assert load_image(data, SPEC).shape == (224, 224, 3)


def test_decoder_fuzz_fast():
    outcomes = fuzz(600)
    assert sum(outcomes.values()) >= 600 and outcomes.get("decoded") and len(outcomes) > 1


@pytest.mark.slow
def test_decoder_fuzz_10k():
    outcomes = fuzz(10_000)
    print("decoder fuzz outcomes:", outcomes)
    assert sum(outcomes.values()) >= 10_000  # every case ended in a decoded image or one of our typed errors
