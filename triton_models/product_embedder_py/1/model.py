"""Triton python backend: the product embedder's ONNX graph run in-process by ONNX Runtime or OpenVINO.

For Triton builds without the onnxruntime backend (the CPU `tritonserver` of the nvidia-pytriton wheel).
Triton's dynamic batcher hands `execute` several requests at once; they run as one batch.
The `runtime` parameter picks the runtime; `auto` takes the graph's fastest measured one
(`vision.runtimes.fastest_runtime`: OpenVINO for the int8 graph of `seesku quantize`, ONNX Runtime for fp32).
"""

from __future__ import annotations

import json
import os
import site
from pathlib import Path

# The python backend stub starts an isolated interpreter that ignores PYTHONPATH; honour it here (with
# .pth files, so an editable install of this project counts) so the model finds `vision` and its packages.
for _entry in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_entry)

import numpy as np
import triton_python_backend_utils as pb_utils

from vision.manifest import INPUT_NAME, OUTPUT_NAMES
from vision.runtimes import fastest_runtime
from vision.runtimes.onnx import OnnxRuntimeEmbedder
from vision.runtimes.openvino import OpenVinoEmbedder


def model_folder(args: dict) -> Path:
    """The folder holding manifest.json and the graph: this model's own (as `seesku triton serve`
    prepares it) or, in the source repository, the product_embedder folder beside it."""
    own = Path(args["model_repository"])
    return own if (own / "manifest.json").exists() else own.parent / "product_embedder"


def create_embedder(folder: Path, parameters: dict[str, str]):
    runtime = parameters.get("runtime", "auto")
    if runtime == "auto":
        runtime = fastest_runtime(folder)
    threads = int(parameters.get("intra_op_threads", "0"))
    if runtime == "openvino":
        return OpenVinoEmbedder(folder, threads=threads)
    if runtime == "onnx":
        return OnnxRuntimeEmbedder(folder, threads=threads, spinning=parameters.get("allow_spinning", "0") == "1")
    raise ValueError(f"product_embedder: unknown runtime parameter {runtime!r} (auto, onnx or openvino)")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.embedder = create_embedder(model_folder(args), parameters)
        self.embedder.load()

    def execute(self, requests):
        pixels = [pb_utils.get_input_tensor_by_name(r, INPUT_NAME).as_numpy() for r in requests]
        try:
            out = self.embedder.embed(np.concatenate(pixels))
        except Exception as exc:  # a bad batch fails its requests, never the model instance
            error = pb_utils.TritonError(f"product_embedder: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for batch in pixels:
            end = start + len(batch)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(getattr(out, name)[start:end])) for name in OUTPUT_NAMES
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses

    def finalize(self):
        self.embedder = None
