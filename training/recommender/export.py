"""Export the recommender to ONNX next to the embedder in the Triton repository (`user_recommender/`).

Graph: `items`, `channels`, `types` (int64, batch x length, left-padded, newest last) in; `user_vector`
(batch x dim) and `scores` (batch x items+1, column 0 is padding) out. The manifest carries the product
vocabulary, so the service maps product ids without torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from training.recommender.model import load
from vision.files import atomic_path
from vision.recommender import INPUT_NAMES, OUTPUT_NAMES, RecommenderManifest
from vision.runtimes.onnx import onnx_session

CONFIG_PBTXT = """# The shopper model (training/recommender): a shopper's event history in, a user vector and a score for
# every product out. Served by Triton beside product_embedder; the API runs the same graph in-process.
name: "user_recommender"
backend: "onnxruntime"
max_batch_size: 0
input [
  {{ name: "items", data_type: TYPE_INT64, dims: [ -1, -1 ] }},
  {{ name: "channels", data_type: TYPE_INT64, dims: [ -1, -1 ] }},
  {{ name: "types", data_type: TYPE_INT64, dims: [ -1, -1 ] }}
]
output [
  {{ name: "user_vector", data_type: TYPE_FP32, dims: [ -1, {dim} ] }},
  {{ name: "scores", data_type: TYPE_FP32, dims: [ -1, {items} ] }}
]
"""


def export_recommender(
    checkpoint: Path, out_dir: Path, metrics: dict[str, float] | None = None, command: str = ""
) -> RecommenderManifest:
    model, state = load(checkpoint)
    if not state["vocabulary"]:
        raise ValueError(
            "this checkpoint was trained on a sequence file without product ids; train with --from-events "
            "(or on a vocabulary) to serve it"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "1").mkdir(exist_ok=True)
    length = min(5, model.max_len)
    example = (
        torch.randint(1, model.num_items + 1, (2, length)),
        torch.ones(2, length, dtype=torch.long),
        torch.ones(2, length, dtype=torch.long),
    )
    with atomic_path(out_dir / "1" / "model.onnx", suffix=".onnx") as tmp:
        batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("length", min=1, max=model.max_len)
        torch.onnx.export(
            model,
            example,
            str(tmp),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={name: {0: batch, 1: seq} for name in INPUT_NAMES},
            opset_version=18,
            dynamo=True,
            external_data=False,
        )
        parity = _parity(model, tmp)
        if parity < 0.9999:
            raise RuntimeError(f"ONNX/torch score correlation {parity:.6f} < 0.9999")
    config = state["config"]
    manifest = RecommenderManifest(
        model_id=f"seesku-sequence-recommender-d{config['dim']}",
        # As for the embedder, the graph's checksum: two trainings never share a version, so an answer's
        # `personal_model` says which one re-ranked it.
        version=hashlib.sha256((out_dir / "1" / "model.onnx").read_bytes()).hexdigest()[:12],
        vocabulary=state["vocabulary"],
        max_len=config["max_len"],
        dim=config["dim"],
        metrics={**(metrics or {}), "parity_min_correlation": parity},
        command=command,
        data=config["data"],
    )
    manifest.save(out_dir)
    (out_dir / "config.pbtxt").write_text(CONFIG_PBTXT.format(dim=config["dim"], items=state["num_items"] + 1))
    return manifest


def _parity(model, onnx_path: Path) -> float:
    session = onnx_session(onnx_path)
    worst = 1.0
    for length in (1, 3, model.max_len):
        items = torch.randint(1, model.num_items + 1, (3, length))
        items[0, : length // 2] = 0  # left padding
        channels = torch.randint(1, 6, (3, length)) * (items != 0)
        types = torch.randint(1, 5, (3, length)) * (items != 0)
        with torch.no_grad():
            expected = model(items, channels, types)[1].numpy()
        got = session.run(["scores"], {"items": items.numpy(), "channels": channels.numpy(), "types": types.numpy()})[0]
        for a, b in zip(expected, got):
            worst = min(worst, float(np.corrcoef(a[1:], b[1:])[0, 1]))
    return worst
