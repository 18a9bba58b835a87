"""Triton python backend: photo bytes -> the products in it (boxes, scores) and the embedder's inputs: the
whole photo's first, then each product's crop.

The same decodes, detector input, decoding of the detector's outputs and crop as the API's objects=true
(api/catalog/objects.py, vision.detection), which also embeds the whole photo and the crops as one batch;
here it also keeps the embedder's batch from ever being empty (a photo of no product). The detector itself
is the product_detector model, called through Triton (business logic scripting), so on a GPU host it runs
as TensorRT or ONNX Runtime there.
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

from vision.detection import DetectorManifest, find_products
from vision.manifest import ModelManifest
from vision.preprocess import ImageError, Limits, decode, to_model_input


class DetectorFailed(RuntimeError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        repository = Path(args["model_repository"]).parent
        self.spec = ModelManifest.load(repository / "product_embedder").input.spec()
        self.detector = DetectorManifest.load(repository / "product_detector")
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.limits = Limits.from_parameters(parameters)

    def _detect(self, pixels: np.ndarray) -> list:
        """One detector input -> its boxes, from the product_detector model (business logic scripting)."""
        response = pb_utils.InferenceRequest(
            model_name="product_detector",
            requested_output_names=["scores", "boxes"],
            inputs=[pb_utils.Tensor("pixels", pixels)],
        ).exec()
        if response.has_error():
            raise DetectorFailed(f"product_detector: {response.error().message()}")
        scores = pb_utils.get_output_tensor_by_name(response, "scores").as_numpy()[0]
        boxes = pb_utils.get_output_tensor_by_name(response, "boxes").as_numpy()[0]
        return self.detector.decode(scores[None], boxes[None])[0]

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        photo = pb_utils.get_input_tensor_by_name(request, "photo").as_numpy().reshape(-1)[0]
        try:
            small = decode(bytes(photo), self.spec.resize_size, self.limits)  # the whole-photo search's decode
            boxes, crops = find_products(
                bytes(photo), small, self._detect, self.detector.input.size, self.spec, self.limits
            )
        except ImageError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{exc.code}: {exc}"))
        except DetectorFailed as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        whole = to_model_input(small, self.spec)
        outputs = [
            pb_utils.Tensor("boxes", np.array([b.as_array() for b in boxes], np.float32).reshape(-1, 4)),
            pb_utils.Tensor("box_scores", np.array([b.score for b in boxes], np.float32)),
            pb_utils.Tensor("pixels", np.stack([whole, *crops])),
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)
