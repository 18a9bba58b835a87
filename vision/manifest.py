"""The model manifest: what a served model is, read without torch.

It sits next to the exported graph (`triton_models/<model>/manifest.json`) and carries everything a caller
needs to use the graph: input spec, labels, embedding size, provenance and measured metrics. Like timm's
pretrained_cfg, it travels with the model instead of being repeated at call sites.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from vision.files import atomic_write
from vision.preprocess import InputSpec

MANIFEST_NAME = "manifest.json"
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("embedding", "fine_probs", "coarse_probs")


class InputConfig(BaseModel):
    size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    layout: str = "NHWC"
    dtype: str = "uint8"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def spec(self) -> InputSpec:
        return InputSpec(size=self.size, crop_pct=self.crop_pct, interpolation=self.interpolation)


class GalleryConfig(BaseModel):
    """Reference photos baked into the graph whose vote is blended into the category outputs
    (`ProductModel.set_gallery`)."""

    split: str = "train"
    photos: int
    k: int
    temperature: float
    weight: float


class QuantizationRecord(BaseModel):
    """How an int8 graph was made from its fp32 parent (`seesku quantize`), and what it cost on val."""

    method: str = Field(description="the tool and its mode, e.g. nncf post-training, mixed preset")
    parent: str = Field(description="served id (model:version) of the fp32 graph it was quantized from")
    calibration: str = Field(description="data and split the calibration photos came from (never test)")
    calibration_photos: int
    calibration_checksum: str = Field(description="sha256 over the calibration photos' bytes, in order")
    ignored: list[str] = Field([], description="graph nodes kept in fp32")
    val: dict[str, dict[str, float]] = Field(description="fp32 and int8 figures on the val split")
    gate: dict[str, float | bool] = Field(description="the allowed drops and whether the int8 graph met them")


class ModelManifest(BaseModel):
    model_id: str
    version: str
    backbone: str
    source_weights: str
    heads: str = Field(description="how the category heads were obtained")
    input: InputConfig = InputConfig()
    embedding_dim: int
    fine_labels: list[str]
    coarse_labels: list[str]
    fine_to_coarse: list[int] = Field(description="index into coarse_labels for each fine label")
    onnx_file: str = "1/model.onnx"
    precision: str = Field("fp32", description="fp32, or int8 (a QDQ graph made by `seesku quantize`)")
    quantization: QuantizationRecord | None = None
    metrics: dict[str, float] = {}
    command: str = Field("", description="the command that produced this model")
    data_checksum: str = Field("", description="sha256 over the training photos and labels (empty: untrained heads)")
    training: list[dict] = Field([], description="per-epoch training record of a fine-tuned model")
    gallery: GalleryConfig | None = Field(None, description="the voting reference photos in the graph, if any")
    trained_on: str = Field(
        "",
        description="the data and split(s) the model was fine-tuned on, e.g. "
        "grocery_store:train+val (empty: not recorded, or not fine-tuned); "
        "evaluating it on those splits of that data is refused",
    )

    @property
    def served_id(self) -> str:
        """The id every answer and every stored embedding names the model by: model id and version."""
        return f"{self.model_id}:{self.version}"

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelManifest:
        path = Path(model_dir) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no model at {model_dir}: {MANIFEST_NAME} is missing (`seesku export-onnx` writes an fp32 model "
                "folder, `seesku quantize` an int8 one)"
            )
        return cls.model_validate_json(path.read_text())

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / MANIFEST_NAME
        atomic_write(path, json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path
