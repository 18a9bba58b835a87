"""Triton python backend: the product detector's ONNX graph run in-process by ONNX Runtime.

For Triton builds without the onnxruntime backend (the CPU `tritonserver` of the nvidia-pytriton wheel).
Triton's dynamic batcher hands `execute` several requests at once; they run as one batch.
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

from vision.detection import INPUT_NAME, OUTPUT_NAMES, DetectorManifest
from vision.runtimes.onnx import onnx_session


class TritonPythonModel:
    def initialize(self, args):
        own = Path(args["model_repository"])
        folder = own if (own / "manifest.json").exists() else own.parent / "product_detector"
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        manifest = DetectorManifest.load(folder)
        self.session = onnx_session(folder / manifest.onnx_file, int(parameters.get("intra_op_threads", "0")))

    def execute(self, requests):
        pixels = [pb_utils.get_input_tensor_by_name(r, INPUT_NAME).as_numpy() for r in requests]
        try:
            outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.concatenate(pixels)})
        except Exception as exc:  # a bad batch fails its requests, never the model instance
            error = pb_utils.TritonError(f"product_detector: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for batch in pixels:
            end = start + len(batch)
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(o[start:end])) for n, o in zip(OUTPUT_NAMES, outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses

    def finalize(self):
        self.session = None
