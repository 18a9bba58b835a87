"""The layering and the size rules of the code, read from its source (nothing is imported or run).

- vision/ imports nothing of ours; training/ imports vision/ only; triton_models/ imports vision/ only;
- api/ imports vision/ and, in the train and eval commands alone, training/ (and the triton command the
  Triton launcher in triton_models/);
- no module outside tests/ over 400 lines, no function over 80.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("api", "vision", "training", "triton_models")
ALLOWED = {
    "vision": {"vision"},
    "training": {"vision", "training"},
    "triton_models": {"vision", "triton_models"},
    "api": {"api", "vision"},
}
EXCEPTIONS = {  # module -> packages it may import beyond its layer's
    "api/cli/train.py": {"training"},
    "api/cli/train_detector.py": {"training"},
    "api/cli/evaluate.py": {"training"},
    "api/cli/quantize.py": {"training"},
    "api/cli/triton.py": {"triton_models"},
}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def modules() -> list[Path]:
    return sorted(p for package in OURS for p in (ROOT / package).rglob("*.py"))


def imported_packages(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(OURS)


def test_every_package_is_checked():
    assert len(modules()) > 60 and {p.relative_to(ROOT).parts[0] for p in modules()} == set(OURS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path):
    rel = path.relative_to(ROOT).as_posix()
    allowed = ALLOWED[rel.split("/")[0]] | EXCEPTIONS.get(rel, set())
    broken = imported_packages(ast.parse(path.read_text())) - allowed
    assert not broken, f"{rel} imports {sorted(broken)}; its layer may import {sorted(allowed)}"


def test_the_rule_catches_a_break(tmp_path):
    """The check itself: an import of api from vision, even inside a function, is found."""
    tree = ast.parse("def f():\n    from api.settings import Settings\n    import training.metrics\n")
    assert imported_packages(tree) == {"api", "training"}


def sized_units() -> list[tuple[str, str, int]]:
    units = []
    for path in [*modules(), *(ROOT / "bench").glob("*.py"), *(ROOT / "scripts").glob("*.py")]:
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        units.append((rel, "<module>", len(text.splitlines())))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                units.append((rel, node.name, node.end_lineno - node.lineno + 1))
    return units


def test_modules_and_functions_stay_small():
    too_long = [
        f"{rel}:{name} has {lines} lines"
        for rel, name, lines in sized_units()
        if lines > (MAX_MODULE_LINES if name == "<module>" else MAX_FUNCTION_LINES)
    ]
    assert not too_long, "\n".join(too_long)


@pytest.mark.parametrize(
    "protocol, implementations",
    [
        ("api.catalog.store:CatalogStore", ["api.catalog.sql:SqlCatalogStore"]),
        ("api.catalog.index:VectorIndex", ["api.catalog.index:FaissIndex"]),
        (
            "vision.runtimes:Embedder",
            [
                "vision.runtimes.openvino:OpenVinoEmbedder",
                "vision.runtimes.onnx:OnnxRuntimeEmbedder",
                "vision.runtimes.triton:TritonEmbedder",
            ],
        ),
        (
            "vision.runtimes:ShopperScorer",
            ["vision.runtimes.onnx:OnnxShopperScorer", "vision.runtimes.triton:TritonShopperScorer"],
        ),
    ],
)
def test_every_backend_implements_its_whole_protocol(protocol, implementations):
    """Each backend behind its protocol has every member the callers may use (picked by one setting in
    api/settings.py and vision/runtimes/__init__.py)."""
    import importlib

    def load(name: str) -> type:
        module, _, attribute = name.partition(":")
        return getattr(importlib.import_module(module), attribute)

    wanted = {name for name in vars(load(protocol)) if not name.startswith("_") or name == "__len__"}
    wanted -= {"__len__"} if "__len__" not in vars(load(protocol)) else set()
    for implementation in map(load, implementations):
        missing = sorted(name for name in wanted if not hasattr(implementation, name) and name != "manifest")
        assert not missing, f"{implementation.__name__} lacks {missing}"
