"""Shared bits of the benchmarks: sample photos, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERY_PHOTOS = sorted((ROOT / "samples" / "queries").glob("*.jpg"))
MODEL_DIR = ROOT / "triton_models" / "product_embedder"
INT8_DIR = ROOT / "triton_models" / "product_embedder_int8"
# The in-process runtimes the benchmarks compare, as the settings that pick them; the first is the baseline:
# the service as it was before OpenVINO (ONNX Runtime, fp32).
RUNTIMES = {
    "onnxruntime_fp32": {"inference": "onnx", "model_dir": MODEL_DIR},
    "openvino_fp32": {"inference": "openvino", "model_dir": MODEL_DIR},
    "openvino_int8": {"inference": "openvino", "model_dir": INT8_DIR},
}


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def emit(result: dict) -> None:
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(result, indent=2))
