"""Which model and runtime a service gets when nothing is set, and when something is."""

from api.settings import REPO_ROOT, Settings
from vision.manifest import ModelManifest

MODELS = REPO_ROOT / "triton_models"


def test_the_default_is_openvino_on_the_gated_int8_model(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.inference == "openvino" and settings.model_dir == MODELS / "product_embedder_int8"
    manifest = ModelManifest.load(settings.model_dir)
    assert manifest.precision == "int8" and manifest.quantization.gate["passed"]


def test_onnx_runtime_and_triton_default_to_the_fp32_model(tmp_path):
    for inference in ("onnx", "triton://127.0.0.1:8001"):
        assert Settings(data_dir=tmp_path, inference=inference).model_dir == MODELS / "product_embedder"


def test_a_model_dir_that_is_set_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("SEESKU_MODEL_DIR", str(MODELS / "product_embedder"))
    assert Settings(data_dir=tmp_path).model_dir == MODELS / "product_embedder"
    assert Settings(data_dir=tmp_path, model_dir=tmp_path / "mine").model_dir == tmp_path / "mine"
