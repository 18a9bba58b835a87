"""The GPU check of the Triton issue, run by scripts/gpu_check.sh on a GPU machine (an NVIDIA H200).

1. Build the TensorRT FP16 plan from the shipped ONNX graph (scripts/build_trt.py).
2. Compare it with ONNX Runtime on CPU over 256 sample photos: cosine of the embeddings (>= 0.999) and the
   same top-1 fine category.
3. Measure the engine alone: images/s at batch 1, 8 and 64 (uint8 input already on the GPU, outputs left
   there, as Triton's TensorRT backend runs it) and p50/p99 latency at batch 1 including the copy of the
   photo to the GPU and of the outputs back.
4. The same for the INT8 plan built from the int8 graph of `seesku quantize` (`build_trt.py --int8`), compared
   with ONNX Runtime fp32 under the in-process int8 thresholds (tests/vision/test_openvino.py): mean cosine
   >= 0.95 and top-1 agreement >= 95 %.

Writes bench/results/gpu-<date>.json (and a copy under $OUT when set). Every step that cannot run says why
in the JSON instead of failing the whole check.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from build_trt import DEFAULT_ONNX, DEFAULT_PLAN, INT8_ONNX, build  # noqa: E402

OUTPUTS = ("embedding", "fine_probs", "coarse_probs")


def sample_photos(n: int = 256) -> np.ndarray:
    from vision.manifest import ModelManifest
    from vision.preprocess import load_image

    spec = ModelManifest.load(ROOT / "triton_models" / "product_embedder").input.spec()
    paths = sorted((ROOT / "samples").rglob("*.jpg"))[:n]
    return np.stack([load_image(p.read_bytes(), spec) for p in paths])


class Engine:
    """A deserialised plan with torch-allocated GPU buffers for one batch size."""

    def __init__(self, plan: Path):
        import tensorrt as trt
        import torch

        self.torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.batch = None
        _, self.height, self.width, _ = self.engine.get_tensor_shape("pixels")  # (-1, H, W, 3): the export's size

    def bind(self, batch: int) -> None:
        torch = self.torch
        if self.batch == batch:
            return
        self.input = torch.empty((batch, self.height, self.width, 3), dtype=torch.uint8, device="cuda")
        self.context.set_input_shape("pixels", tuple(self.input.shape))
        self.context.set_tensor_address("pixels", self.input.data_ptr())
        self.outputs = {}
        for name in OUTPUTS:
            shape = tuple(self.context.get_tensor_shape(name))
            self.outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, self.outputs[name].data_ptr())
        self.batch = batch

    def run_on_device(self) -> None:
        self.context.execute_async_v3(self.stream.cuda_stream)

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        self.bind(len(pixels))
        with self.torch.cuda.stream(self.stream):
            self.input.copy_(self.torch.from_numpy(pixels), non_blocking=False)
            self.run_on_device()
            out = {name: t.cpu().numpy() for name, t in self.outputs.items()}
        self.stream.synchronize()
        return out


def compare(engine: Engine, photos: np.ndarray) -> dict:
    try:
        from vision.runtimes.onnx import OnnxRuntimeEmbedder
    except ImportError as exc:
        return {"skipped": f"ONNX Runtime reference unavailable: {exc}"}
    reference = OnnxRuntimeEmbedder(ROOT / "triton_models" / "product_embedder").embed(photos)
    got = {k: [] for k in OUTPUTS}
    for start in range(0, len(photos), 64):
        part = engine(photos[start : start + 64])
        for k in OUTPUTS:
            got[k].append(part[k])
    got = {k: np.concatenate(v) for k, v in got.items()}
    cosine = (got["embedding"] * reference.embedding).sum(1) / (
        np.linalg.norm(got["embedding"], axis=1) * np.linalg.norm(reference.embedding, axis=1)
    )
    same_top1 = got["fine_probs"].argmax(1) == reference.fine_probs.argmax(1)
    return {
        "photos": len(photos),
        "cosine_min": round(float(cosine.min()), 6),
        "cosine_mean": round(float(cosine.mean()), 6),
        "same_top1_fine": int(same_top1.sum()),
        "max_abs_fine_prob_diff": round(float(np.abs(got["fine_probs"] - reference.fine_probs).max()), 5),
        "pass": bool(cosine.min() >= 0.999 and same_top1.all()),
        "pass_int8": bool(cosine.mean() >= 0.95 and same_top1.mean() >= 0.95),
    }


def int8_check(photos: np.ndarray) -> dict:
    """Build, compare and time the INT8 plan (step 4)."""
    if not INT8_ONNX.exists():
        return {"skipped": f"{INT8_ONNX} is missing"}
    plan = DEFAULT_PLAN.with_name("model-int8.plan")
    result = {"build": build(INT8_ONNX, plan, int8=True)}
    engine = Engine(plan)
    result["agreement"] = compare(engine, photos)
    result["throughput"] = [throughput(engine, b) for b in (1, 8, 64)]
    result["latency_batch1"] = latency_batch1(engine, photos)
    plan.unlink()  # tied to this GPU; the served slot keeps the FP16 plan
    return result


def throughput(engine: Engine, batch: int, seconds: float = 3.0) -> dict:
    engine.bind(batch)
    for _ in range(20):
        engine.run_on_device()
    engine.stream.synchronize()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            engine.run_on_device()
        runs += 50
        engine.stream.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "batch": batch,
        "img_per_s": round(runs * batch / elapsed, 1),
        "ms_per_batch": round(elapsed / runs * 1e3, 4),
    }


def latency_batch1(engine: Engine, photos: np.ndarray, n: int = 2000) -> dict:
    for i in range(50):
        engine(photos[i % len(photos)][None])
    times = []
    for i in range(n):
        t = time.perf_counter()
        engine(photos[i % len(photos)][None])
        times.append((time.perf_counter() - t) * 1e3)
    ms = np.array(times)
    return {
        "requests": n,
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "includes": "host-to-device copy of the photo, the engine, device-to-host copy of the outputs",
    }


def gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except Exception as exc:  # noqa: BLE001
        return f"unknown ({exc})"


def main() -> None:
    report: dict = {
        "check": "gpu_tensorrt_fp16",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "targets": {"img_per_s_batch64_min": 30000, "p99_ms_batch1_max": 5.0, "cosine_min": 0.999},
    }
    try:
        import tensorrt as trt

        report["tensorrt"] = trt.__version__
        report["build"] = build(DEFAULT_ONNX, DEFAULT_PLAN)
        engine = Engine(DEFAULT_PLAN)
        photos = sample_photos()
        report["agreement"] = compare(engine, photos)
        report["throughput"] = [throughput(engine, b) for b in (1, 8, 64)]
        report["latency_batch1"] = latency_batch1(engine, photos)
        report["met"] = {
            "img_per_s_batch64": report["throughput"][-1]["img_per_s"] >= 30000,
            "p99_ms_batch1": report["latency_batch1"]["p99_ms"] < 5.0,
            "agreement": report["agreement"].get("pass"),
        }
        report["int8"] = int8_check(photos)
    except ImportError as exc:
        report["error"] = f"TensorRT (or torch) is not installed here: {exc}"
    except Exception as exc:  # noqa: BLE001 - the JSON says what failed; the script still writes it
        report["error"] = f"{type(exc).__name__}: {exc}"
    text = json.dumps(report, indent=2)
    print(text)
    out = ROOT / "bench" / "results" / f"gpu-{datetime.now(UTC):%Y%m%d-%H%M}.json"
    out.write_text(text + "\n")
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / out.name).write_text(text + "\n")


if __name__ == "__main__":
    main()
