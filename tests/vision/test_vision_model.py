"""Backbone weights, the product model and its ONNX export (needs the train extras)."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from api.settings import REPO_ROOT  # noqa: E402
from tests.conftest import sample_catalog_subset  # noqa: E402
from vision.backbones import create_backbone, pair_state_dict  # noqa: E402
from vision.manifest import ModelManifest  # noqa: E402
from vision.preprocess import InputSpec, load_image  # noqa: E402

BANANA = REPO_ROOT / "samples" / "catalog" / "Banana.jpg"
MODEL_DIR = REPO_ROOT / "triton_models" / "product_embedder"


def imagenet_probs(model, path: Path) -> torch.Tensor:
    pixels = torch.from_numpy(load_image(path.read_bytes(), InputSpec(224, 0.875))).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        return model((pixels / 255.0 - 0.5) / 0.5).softmax(-1)[0]


def test_offline_weights_classify_banana():
    probs = imagenet_probs(create_backbone("tf_efficientnet_lite0"), BANANA)
    assert int(probs.argmax()) == 954  # ImageNet "banana"
    assert float(probs[954]) > 0.8


def test_random_weights_do_not_know_bananas():
    probs = imagenet_probs(create_backbone("tf_efficientnet_lite0", pretrained=False), BANANA)
    assert float(probs[954]) < 0.5


def test_pairing_checks_every_shape():
    src = {"a": torch.zeros(3, 4), "b": torch.zeros(2)}
    assert set(pair_state_dict(src, {"x": torch.zeros(3, 4), "y": torch.zeros(2)})) == {"x", "y"}
    with pytest.raises(ValueError, match="shape mismatch"):
        pair_state_dict(src, {"x": torch.zeros(3, 4), "y": torch.zeros(3)})
    with pytest.raises(ValueError, match="tensors"):
        pair_state_dict(src, {"x": torch.zeros(3, 4)})


@pytest.mark.slow
def test_export_parity_and_manifest(tmp_path):
    from vision.export import PARITY_MIN_COSINE, export_pretrained

    # a small catalogue from the samples: 6 products in 3 coarse classes
    small = tmp_path / "catalog.csv"
    chosen = sample_catalog_subset(small, lambda r: r["coarse_category"] in ("Apple", "Milk", "Pepper"), limit=6)
    manifest = export_pretrained(small, tmp_path / "model", log=lambda _: None)
    assert manifest.metrics["parity_min_cosine"] >= PARITY_MIN_COSINE
    assert manifest.fine_labels == [r["fine_category"] for r in chosen]
    assert len(manifest.coarse_labels) == len({r["coarse_category"] for r in chosen})
    # the version is the graph's checksum, so a re-export that changes the vectors makes catalogues re-embed
    import hashlib

    graph = (tmp_path / "model" / manifest.onnx_file).read_bytes()
    assert manifest.version == hashlib.sha256(graph).hexdigest()[:12]
    assert ModelManifest.load(tmp_path / "model").version == manifest.version

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "model" / manifest.onnx_file))
    pixels = np.stack([load_image(BANANA.read_bytes())] * 3)  # dynamic batch axis
    emb, fine, coarse = session.run(None, {"pixels": pixels})
    assert emb.shape == (3, manifest.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert fine.shape == (3, 6) and coarse.shape == (3, len(manifest.coarse_labels))
    np.testing.assert_allclose(fine.sum(1), 1.0, atol=1e-4)


def test_committed_model_reproduces_its_manifest():
    """The graph `make run` serves is the fine-tuned model its manifest describes: same sample-query figures."""
    import csv

    import onnxruntime as ort

    manifest = ModelManifest.load(MODEL_DIR)
    assert manifest.model_id.endswith("-ft") and len(manifest.data_checksum) == 64 and manifest.training
    assert manifest.command.startswith("seesku train vision")
    rows = list(csv.DictReader(open(REPO_ROOT / "samples" / "queries.csv")))
    pixels = np.stack(
        [load_image((REPO_ROOT / "samples" / r["image"]).read_bytes(), manifest.input.spec()) for r in rows]
    )
    emb, fine, _ = ort.InferenceSession(str(MODEL_DIR / manifest.onnx_file)).run(None, {"pixels": pixels})
    assert emb.shape == (len(rows), manifest.embedding_dim)
    top1 = np.mean([manifest.fine_labels[i] == r["fine_category"] for i, r in zip(fine.argmax(1), rows)])
    assert top1 == pytest.approx(manifest.metrics["sample_queries_fine_top1"])


def test_committed_manifest_is_consistent():
    manifest = ModelManifest.load(MODEL_DIR)
    raw = json.loads((MODEL_DIR / "manifest.json").read_text())
    assert raw["metrics"]["parity_min_cosine"] >= 0.9999
    assert len(manifest.fine_labels) == 81 and len(manifest.coarse_labels) == 43  # classes.csv has coarse ids 0..42
    assert len(manifest.fine_to_coarse) == 81
    assert manifest.input.mean == (0.5, 0.5, 0.5)
    import onnxruntime as ort

    graph_input = ort.InferenceSession(str(MODEL_DIR / manifest.onnx_file)).get_inputs()[0]
    assert graph_input.shape[1:] == [manifest.input.size, manifest.input.size, 3]  # the size the service feeds


def test_triton_config_matches_manifest():
    manifest = ModelManifest.load(MODEL_DIR)
    config = (MODEL_DIR / "config.pbtxt").read_text()
    size = manifest.input.size
    # every model of the repository that takes or makes the pixels: the embedders and the preprocess step
    for name in ("product_embedder", "product_embedder_py", "product_embedder_trt", "preprocess"):
        assert f"dims: [ {size}, {size}, 3 ]" in (MODEL_DIR.parent / name / "config.pbtxt").read_text(), name
    for doc in ("deploy/k8s/triton.yaml", "deploy/README.md"):  # the TensorRT profile shapes of the GPU deployment
        text = (REPO_ROOT / doc).read_text()
        assert f"pixels:1x{size}x{size}x3" in text and f"pixels:64x{size}x{size}x3" in text, doc
    assert f'name: "embedding", data_type: TYPE_FP32, dims: [ {manifest.embedding_dim} ]' in config
    assert f"dims: [ {len(manifest.fine_labels)} ]" in config and f"dims: [ {len(manifest.coarse_labels)} ]" in config
