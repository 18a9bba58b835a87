"""Build the TensorRT FP16 plan of the product embedder from its ONNX graph, on the GPU that will serve it.

    python scripts/build_trt.py [--onnx triton_models/product_embedder/1/model.onnx]
                                [--out triton_models/product_embedder_trt/1/model.plan]
    python scripts/build_trt.py --int8     # the INT8 plan, from triton_models/product_embedder_int8

`--int8` builds from the int8 graph of `seesku quantize` instead: its Q/DQ nodes carry the scales NNCF
calibrated on the same training photos (the manifest names them and their checksum), so TensorRT quantizes
explicitly with those scales and no calibrator of its own; the layers the graph keeps in fp32 (projection,
heads, voting gallery) run in FP16. The plan goes to the same served model, product_embedder_trt; point
the API's SEESKU_MODEL_DIR at the int8 folder so its manifest (and catalogue) match.

An optimisation profile covers batch 1..64 (tuned for 32), matching product_embedder_trt/config.pbtxt. The
graph takes uint8 NHWC pixels and casts inside, which TensorRT accepts as a network input. The plan is
written atomically and never committed: it is tied to the GPU model and the TensorRT version that built it.
Needs the `tensorrt` package (PyPI) and a CUDA GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ONNX = ROOT / "triton_models" / "product_embedder" / "1" / "model.onnx"
DEFAULT_PLAN = ROOT / "triton_models" / "product_embedder_trt" / "1" / "model.plan"
INT8_ONNX = ROOT / "triton_models" / "product_embedder_int8" / "1" / "model.onnx"


def build(
    onnx_path: Path,
    plan_path: Path,
    min_batch: int = 1,
    opt_batch: int = 32,
    max_batch: int = 64,
    fp16: bool = True,
    workspace_gib: int = 4,
    int8: bool = False,
) -> dict:
    """int8: the graph is a Q/DQ graph (explicit quantization); FP16 stays on for its fp32 layers."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (the only mode in TensorRT 10)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        _, *rest = tensor.shape  # (-1, H, W, 3)
        profile.set_shape(tensor.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    started = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine; see the log above")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    tmp.write_bytes(bytes(plan))
    os.replace(tmp, plan_path)
    return {
        "plan": str(plan_path),
        "bytes": plan_path.stat().st_size,
        "tensorrt": trt.__version__,
        "fp16": fp16,
        "int8": int8,
        "onnx": str(onnx_path),
        "batch_profile": [min_batch, opt_batch, max_batch],
        "build_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, help=f"default: {DEFAULT_ONNX} ({INT8_ONNX} with --int8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_PLAN)
    parser.add_argument("--fp32", action="store_true", help="no FP16 (for comparison)")
    parser.add_argument("--int8", action="store_true", help="INT8 from the Q/DQ graph of `seesku quantize`")
    args = parser.parse_args()
    onnx_path = args.onnx or (INT8_ONNX if args.int8 else DEFAULT_ONNX)
    if args.int8 and not onnx_path.exists():
        sys.exit(f"{onnx_path} is missing: make the int8 graph first (seesku quantize --data DIR)")
    try:
        info = build(onnx_path, args.out, fp16=not args.fp32, int8=args.int8)
    except ImportError:
        sys.exit("TensorRT is not installed: pip install tensorrt (on the GPU machine)")
    print(info)


if __name__ == "__main__":
    main()
