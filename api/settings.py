"""Service settings: environment variables prefixed `SEESKU_` (and a `.env` file), nowhere else.

This is also the one place where settings become objects: the upload limits, the embedder and the shopper
model (one runtime setting, `SEESKU_INFERENCE`), the database (`SEESKU_DATABASE_URL`), the catalogue store on it
and the vector index (`SEESKU_INDEX`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vision.preprocess import Limits

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from api.catalog.index import VectorIndex
    from api.catalog.photos import PhotoStore
    from api.catalog.store import CatalogStore
    from vision.runtimes import Detector, Embedder, ShopperScorer

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEESKU_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="catalogue database, photos and vector index")
    model_dir: Path | None = Field(
        None,
        description="the product model's folder (ONNX graph + manifest); unset: the int8 model under `openvino`, "
        "the fp32 one otherwise",
    )
    inference: str = Field(
        "openvino",
        pattern=r"^(onnx|openvino|triton://[^/:]+:\d+)$",
        description="embedder runtime: `onnx` (in-process ONNX Runtime), `openvino` (in-process OpenVINO) or "
        "`triton://HOST:GRPC_PORT`",
    )
    triton_model: str = Field("product_embedder", description="Triton model to call (product_embedder_trt: TensorRT)")
    triton_timeout_s: float = Field(5.0, gt=0, description="deadline of one Triton call")
    inference_startup_wait_s: float = Field(60.0, ge=0, description="how long start-up waits for a remote embedder")
    triton_retries: int = Field(
        2, ge=0, le=10, description="retries of a Triton call that failed for want of the server"
    )
    database_url: str | None = Field(
        None,
        description="the database of the catalogue, events and API keys: `sqlite:///PATH` or "
        "`postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB`; unset: `<data dir>/catalog.sqlite3`",
    )
    db_auto_upgrade: bool = Field(
        True, description="migrate the database to this version's schema at start-up (else `seesku db upgrade`)"
    )
    photo_store: str | None = Field(
        None,
        description="where photo bytes live: `database`, or a folder every replica mounts; unset: the data dir's "
        "`images/` on SQLite, the database on PostgreSQL",
    )
    index: str = Field(
        "faiss",
        pattern=r"^(faiss|milvus://[^/:]+:\d+)$",
        description="vector index: `faiss` (in-process, files under the data dir) or `milvus://HOST:PORT`",
    )
    milvus_collection: str = Field("seesku_images", description="Milvus collection prefix (one per model)")
    index_timeout_s: float = Field(3.0, gt=0, description="deadline of one Milvus call, retries included (503 after)")
    follow_interval_s: float = Field(
        0.5, ge=0, description="how often a replica polls the catalogue's change log; 0 = only before searches"
    )
    onnx_threads: int = Field(
        0, ge=0, description="in-process inference threads (ONNX Runtime or OpenVINO); 0 = all cores"
    )
    switch_embed_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of the time a model switch spends embedding the catalogue for the new version (it "
        "rests the rest, so searches keep their latency); 1 = flat out",
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="largest accepted photo (413 above)")
    max_image_pixels: int = Field(50_000_000, gt=0, description="decompression-bomb guard (422 above)")
    max_images_per_request: int = Field(32, gt=0, description="photos in one POST /v1/products/{id}/images")
    head_weight: float = Field(
        0.5,
        ge=0,
        le=10,
        description="search score = visual similarity + head_weight x P(product's fine category); 0 = visual only",
    )
    personal_weight: float = Field(
        0.5,
        ge=0,
        le=10,
        description="search score += personal_weight x personal_score for a shopper with history; 0 = off (also per request)",
    )
    recommender_dir: Path | None = Field(
        REPO_ROOT / "triton_models" / "user_recommender", description="shopper model (ONNX + manifest)"
    )
    detector_dir: Path | None = Field(
        None,
        description="product detector (ONNX + manifest) for searches with objects=true; unset: the int8 one under "
        "`openvino`, the fp32 one otherwise; a folder without one: those searches get a 503",
    )
    hnsw_threshold: int = Field(20_000, gt=0, description="vectors above which the index switches to HNSW")
    index_save_interval_s: float = Field(5.0, ge=0, description="least seconds between index snapshots")
    tagging_root: Path | None = Field(
        None, description="folder that CSV tagging jobs may read photos from; unset: CSV jobs refused"
    )
    max_tagging_upload_bytes: int = Field(
        2 * 1024**3, gt=0, description="largest zip or CSV accepted by POST /v1/tagging/jobs"
    )
    tagging_workers: int = Field(
        0,
        ge=0,
        description="processes a tagging job decodes and embeds on; 0 = one per core "
        "(fewer keep cores for searches while a job runs)",
    )
    tagging_lease_s: float = Field(
        15.0, gt=0, description="a replica silent this long about its tagging job is taken for dead; another resumes it"
    )
    require_keys: bool | None = Field(
        None, description="API keys required; unset: required unless listening on loopback"
    )
    rate_limit_per_s: float = Field(
        50.0, gt=0, description="requests per second per API key (per address without keys)"
    )
    rate_limit_burst: int = Field(100, gt=0, description="burst allowance of the rate limit")
    cors_origins: list[str] = Field([], description="origins allowed to call the API from a browser (JSON list)")
    body_idle_timeout_s: float = Field(30.0, gt=0, description="longest pause in a request body before 408")
    request_timeout_s: float = Field(60.0, gt=0, description="longest wait for a response after the body before 504")
    load_samples: bool = Field(True, description="import the sample catalogue when the catalogue is empty")
    sample_catalog: Path = Field(REPO_ROOT / "samples" / "catalog.csv")
    host: str = "127.0.0.1"
    port: int = 8000
    _engine: Engine | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _default_model_for_the_runtime(self) -> Settings:
        # The int8 graph passed its gate (training/reports/model-card.md) and runs fastest on OpenVINO
        # (bench/embed.py); ONNX Runtime runs it at a third of fp32's speed, and Triton serves the fp32 folder.
        if self.model_dir is None:
            folder = "product_embedder_int8" if self.inference == "openvino" else "product_embedder"
            self.model_dir = REPO_ROOT / "triton_models" / folder
        if self.detector_dir is None:
            folder = "product_detector_int8" if self.inference == "openvino" else "product_detector"
            self.detector_dir = REPO_ROOT / "triton_models" / folder
        return self

    # -- settings as objects --------------------------------------------------------------------
    def limits(self) -> Limits:
        """What an uploaded photo may be: bytes (413 above) and pixels (422 above)."""
        return Limits(self.max_upload_bytes, self.max_image_pixels)

    def create_embedder(self, model_dir: Path | None = None) -> Embedder:
        """The embedder of `model_dir` (default: the configured model) on the configured runtime."""
        from vision.runtimes import create_embedder

        return create_embedder(
            self.inference,
            model_dir or self.model_dir,
            self.onnx_threads,
            self.triton_model,
            self.triton_timeout_s,
            self.triton_retries,
        )

    def create_shopper_scorer(self, recommender_dir: Path | None = None) -> ShopperScorer | None:
        """The shopper model of `recommender_dir` (default: the configured one) on the same runtime as the
        embedder; None without an exported one."""
        from vision.recommender import MANIFEST_NAME
        from vision.runtimes import create_shopper_scorer

        folder = recommender_dir or self.recommender_dir
        if folder is None or not (folder / MANIFEST_NAME).exists():
            return None
        return create_shopper_scorer(self.inference, folder, self.triton_timeout_s, self.triton_retries)

    def create_detector(self) -> Detector | None:
        """The product detector on the configured runtime; None without an exported one."""
        from vision.detection import MANIFEST_NAME
        from vision.runtimes import create_detector

        if self.detector_dir is None or not (self.detector_dir / MANIFEST_NAME).exists():
            return None
        return create_detector(
            self.inference, self.detector_dir, self.onnx_threads, self.triton_timeout_s, self.triton_retries
        )

    def database_target(self) -> str:
        """The database's URL: `database_url`, or the embedded SQLite file of the data dir."""
        from api.db.engine import default_url

        return self.database_url or default_url(self.data_dir)

    def database(self) -> Engine:
        """The database engine (one per Settings), its schema checked or migrated, and a data dir's API keys
        and tagging jobs from before the shared database imported into it."""
        if self._engine is None:
            from api.db import legacy, migrate
            from api.db.engine import create_engine

            engine = create_engine(self.database_target())
            migrate.prepare(engine, self.db_auto_upgrade)
            legacy.import_keys_file(engine, self.data_dir)
            legacy.import_jobs_file(engine, self.data_dir)
            self._engine = engine
        return self._engine

    def create_store(self) -> CatalogStore:
        from api.catalog.sql import SqlCatalogStore

        return SqlCatalogStore(self.database())

    def create_photo_store(self) -> PhotoStore:
        from api.catalog.photos import DatabasePhotos, PhotoFiles

        engine = self.database()
        where = self.photo_store or ("database" if engine.dialect.name == "postgresql" else None)
        if where == "database":
            return DatabasePhotos(engine)
        return PhotoFiles(Path(where) if where else self.data_dir / "images")

    def open_index(self, model_id: str, dim: int) -> tuple[VectorIndex, bool]:
        """The vector index `index` names, for the model's embeddings, and whether it kept its contents
        from the last run (False: empty, to be rebuilt from the store)."""
        if self.index.startswith("milvus://"):
            from api.catalog.milvus import open_milvus_index

            return open_milvus_index(self.index, self.milvus_collection, model_id, dim, self.index_timeout_s)
        from api.catalog.index import open_faiss_index

        return open_faiss_index(self.data_dir / "index" / "images.faiss", model_id, dim, self.hnsw_threshold)


@lru_cache
def get_settings() -> Settings:
    return Settings()
