#!/usr/bin/env bash
# The one prepared GPU check of the Triton issue, for a lent GPU machine (an NVIDIA H200): builds the
# TensorRT FP16 plan of the shipped embedder, compares it with ONNX Runtime on 256 sample photos and
# measures img/s at batch 1, 8, 64 and p99 at batch 1. Writes bench/results/gpu-*.json (and $OUT/ when set).
#
#   bash scripts/gpu_check.sh            # from the repository root on the GPU machine
#
# That machine has PyTorch and Triton's Python packages and no network. What else the check needs is
# installed from wheels brought along under wheels/ (e.g. tensorrt, onnxruntime, pydantic, pillow-heif),
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

need() {  # need MODULE PACKAGE: install PACKAGE from wheels/ if MODULE does not import
  if ! $PY -c "import $1" 2>/dev/null; then
    if [ -d wheels ]; then
      $PY -m pip install --quiet --no-index --find-links wheels "$2" || echo "could not install $2 from wheels/"
    else
      echo "$1 missing and no wheels/ folder: the check will say so in its JSON"
    fi
  fi
}
need numpy numpy
need PIL pillow
need pydantic pydantic
need onnxruntime onnxruntime
need tensorrt tensorrt

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 540 $PY scripts/gpu_check.py
