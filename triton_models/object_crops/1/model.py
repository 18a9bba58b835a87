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

from vision.detection import CROP_DECODE_SIDE, DetectorManifest, crop, decode_detections, detector_input
from vision.manifest import ModelManifest
from vision.preprocess import ImageError, Limits, decode, load_image, to_model_input


class TritonPythonModel:
    def initialize(self, args):
        repository = Path(args["model_repository"]).parent
        self.spec = ModelManifest.load(repository / "product_embedder").input.spec()
        self.detector = DetectorManifest.load(repository / "product_detector")
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        defaults = Limits()
        self.limits = Limits(
            int(parameters.get("max_upload_bytes") or defaults.max_bytes),
            int(parameters.get("max_image_pixels") or defaults.max_pixels),
        )

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        photo = pb_utils.get_input_tensor_by_name(request, "photo").as_numpy().reshape(-1)[0]
        try:
            whole = load_image(bytes(photo), self.spec, self.limits)
            im = decode(bytes(photo), CROP_DECODE_SIDE, self.limits)
        except ImageError as exc:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{exc.code}: {exc}"))
        pixels = detector_input(im, self.detector.input.size)[None]
        detect = pb_utils.InferenceRequest(
            model_name="product_detector",
            requested_output_names=["scores", "boxes"],
            inputs=[pb_utils.Tensor("pixels", pixels)],
        ).exec()
        if detect.has_error():
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"product_detector: {detect.error().message()}")
            )
        scores = pb_utils.get_output_tensor_by_name(detect, "scores").as_numpy()[0]
        boxes = pb_utils.get_output_tensor_by_name(detect, "boxes").as_numpy()[0]
        m = self.detector
        found = decode_detections(scores, boxes, m.score_threshold, m.nms_iou, m.max_objects)
        crops = [to_model_input(crop(im, box), self.spec) for box in found]
        outputs = [
            pb_utils.Tensor("boxes", np.array([b.as_array() for b in found], np.float32).reshape(-1, 4)),
            pb_utils.Tensor("box_scores", np.array([b.score for b in found], np.float32)),
            pb_utils.Tensor("pixels", np.stack([whole, *crops])),
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)
