"""Triton python backend: the shopper model's ONNX graph run by ONNX Runtime.

For Triton builds without the onnxruntime backend (the CPU `tritonserver` of the nvidia-pytriton wheel).
Each request is one shopper's history (a batch of one, as the API sends it).
"""

from __future__ import annotations

import os
import site
from pathlib import Path

# The python backend stub starts an isolated interpreter that ignores PYTHONPATH; honour it here (with
# .pth files, so an editable install of this project counts) so the model finds `vision` and its packages.
for _entry in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_entry)

import triton_python_backend_utils as pb_utils

from vision.recommender import INPUT_NAMES, OUTPUT_NAMES, RecommenderManifest
from vision.runtimes.onnx import onnx_session


def model_folder(args: dict) -> Path:
    """The folder holding manifest.json and the graph: this model's own (as `seesku triton serve` prepares
    it) or, in the source repository, the user_recommender folder beside it."""
    own = Path(args["model_repository"])
    return own if (own / "manifest.json").exists() else own.parent / "user_recommender"


class TritonPythonModel:
    def initialize(self, args):
        folder = model_folder(args)
        self.session = onnx_session(folder / RecommenderManifest.load(folder).onnx_file, threads=1)

    def execute(self, requests):
        responses = []
        for request in requests:
            inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in INPUT_NAMES}
            try:
                outputs = self.session.run(list(OUTPUT_NAMES), inputs)
            except Exception as exc:  # a bad request fails alone, never the model instance
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"user_recommender: {exc}")))
                continue
            tensors = [pb_utils.Tensor(name, value) for name, value in zip(OUTPUT_NAMES, outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self.session = None
