# Triton for production on NVIDIA GPUs: the official image (TensorRT, ONNX Runtime and python backends)
# plus what seesku's python-backend models import (the `vision` package: one preprocessing transform for
# the API, the benchmarks and Triton). The model repository is mounted, not baked in: see deploy/README.md.
ARG TRITON_VERSION=24.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3
RUN pip install --no-cache-dir "numpy<2" "pillow>=11" "pillow-heif>=0.20" "pydantic>=2.7" "onnxruntime>=1.20"
COPY vision /opt/seesku/vision
# The python backend's interpreter ignores PYTHONPATH; seesku's model.py files add these entries themselves.
ENV PYTHONPATH=/opt/seesku
