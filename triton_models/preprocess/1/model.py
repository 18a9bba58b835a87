"""Triton python backend: encoded photo bytes to the embedder's uint8 NHWC input.

The same vision.preprocess transform as the API, with the same size and pixel limits (the model's
parameters, written from the service's settings by `seesku triton serve`); the spec comes from the product
embedder's manifest so the two can never disagree. A photo that does not decode fails its own
request with the decoder's message and leaves the rest of the batch alone.
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

from vision.manifest import ModelManifest
from vision.preprocess import ImageError, Limits, load_image


class TritonPythonModel:
    def initialize(self, args):
        repository = Path(args["model_repository"]).parent
        self.spec = ModelManifest.load(repository / "product_embedder").input.spec()
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.limits = Limits.from_parameters(parameters)

    def execute(self, requests):
        responses = []
        for request in requests:
            photos = pb_utils.get_input_tensor_by_name(request, "photo").as_numpy().reshape(-1)
            try:
                pixels = np.stack([load_image(bytes(photo), self.spec, self.limits) for photo in photos])
            except ImageError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{exc.code}: {exc}")))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("pixels", pixels)]))
        return responses
