# The two front-door commands: `make run` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: run test test-fast lint triton services services-stop bench export-onnx clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Serving only: no torch.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

# Tests, training and export: torch, timm and the offline pretrained weights too.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[train,dev]'
	touch $@ $(VENV)/.serve

# A real Triton server on CPU: the tritonserver binary of the nvidia-pytriton wheel (without its deps: it
# pins numpy<2), and the packages its python backend stub imports, apart from ours: the stub is built
# against numpy 1. `seesku triton serve` and the tests use both.
$(VENV)/.triton: | $(BIN)/python
	$(PIP) --no-deps nvidia-pytriton==0.7.0
	$(PIP) --target $(VENV)/triton-stub 'numpy<2' 'onnxruntime~=1.32.0' 'openvino~=2026.4.1' pillow pillow-heif pydantic 2>&1 | grep -v "requires\|incompatible\|dependency resolver" || true
	test -d $(VENV)/triton-stub/numpy && test -d $(VENV)/triton-stub/openvino
	touch $@

triton: $(VENV)/.serve $(VENV)/.triton
	$(BIN)/seesku triton serve

# The page tests drive Debian's chromium through Playwright (Playwright's own browser download is not used).
$(VENV)/.browser: | $(BIN)/python
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	touch $@

# The servers several replicas share, in .services/, for development: PostgreSQL (Debian's package) and
# Milvus (the milvus-lite 2.5 wheel's server). Each prints the URL to set: SEESKU_DATABASE_URL, SEESKU_INDEX.
services: $(VENV)/.serve
	@scripts/postgres.sh start .services/postgres 54329
	@scripts/milvus.sh start .services/milvus 19531

services-stop:
	scripts/milvus.sh stop .services/milvus
	scripts/postgres.sh stop .services/postgres

run: $(VENV)/.serve
	$(BIN)/seesku serve

test: $(VENV)/.dev $(VENV)/.browser $(VENV)/.triton lint
	$(BIN)/python -m pytest -q

# ruff, configured in pyproject.toml: lint and format are checked, never applied, by `make test`.
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Everything but the tests marked slow.
test-fast: $(VENV)/.dev $(VENV)/.triton
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(VENV)/.dev $(VENV)/.triton
	$(BIN)/python bench/embed.py | tee bench/results/embed.json
	$(BIN)/python bench/decode.py | tee bench/results/decode.json
	$(BIN)/python bench/search_e2e.py | tee bench/results/search_e2e.json
	$(BIN)/python bench/load.py | tee bench/results/load.json
	$(BIN)/python bench/tagging.py | tee bench/results/tagging.json
	$(BIN)/python bench/fusion.py | tee bench/results/fusion.json  # needs ../shared/data/grocery_store
	$(BIN)/python bench/triton_vs_onnx.py | tee bench/results/triton.json
	$(BIN)/python bench/replicas.py | tee bench/results/replicas.json  # starts PostgreSQL and Milvus itself
	$(BIN)/python bench/index_scale.py | tee bench/results/index_scale.json  # needs ../shared/data/grocery_store
	$(BIN)/python bench/review_apply.py | tee bench/results/review_apply.json  # needs ../shared/data/grocery_store
	$(BIN)/python bench/model_switch.py | tee bench/results/model_switch.json
	$(BIN)/python bench/objects.py | tee bench/results/objects.json

export-onnx: $(VENV)/.dev
	$(BIN)/seesku export-onnx

clean:
	rm -rf $(VENV) data
