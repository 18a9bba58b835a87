# The seesku API: thin, no torch, stateless when pointed at Triton (and, later, Milvus and PostgreSQL).
FROM python:3.11-slim
WORKDIR /srv/seesku
COPY pyproject.toml README.md ./
COPY vision vision
COPY api api
COPY training training
COPY triton_models triton_models
COPY samples samples
RUN pip install --no-cache-dir .
ENV SEESKU_HOST=0.0.0.0 SEESKU_PORT=8000 SEESKU_DATA_DIR=/var/lib/seesku
EXPOSE 8000
CMD ["seesku", "serve"]
