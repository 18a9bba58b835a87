"""The tables of seesku's database, one schema for SQLite (the embedded default) and PostgreSQL.

This is the shape the code reads and writes; the migrations in api/db/migrations build it, and
tests/api/db/test_migrations.py checks that the two agree. Change a table here and add a migration there.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# 64-bit ids that are never reused (AUTOINCREMENT on SQLite, an identity column on PostgreSQL): a photo id
# is also its vector's id in the index, so a reused id could bring a deleted photo's vector back.
Id = BigInteger().with_variant(Integer(), "sqlite")

products = Table(
    "products",
    metadata,
    Column("product_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("fine_category", Text, nullable=False),
    Column("coarse_category", Text, nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("attributes", Text, nullable=False, server_default="{}"),  # JSON object
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("products_fine", "fine_category"),
    Index("products_coarse", "coarse_category"),
)

images = Table(
    "images",
    metadata,
    Column("image_id", Id, primary_key=True, autoincrement=True),
    Column("product_id", Text, ForeignKey("products.product_id", ondelete="CASCADE"), nullable=False),
    Column("sha256", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("embedding", LargeBinary, nullable=False),  # float32, little-endian
    Column("model_id", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("product_id", "sha256"),
    Index("images_product", "product_id"),
    sqlite_autoincrement=True,
)

# What shoppers did, on every channel: one history per user_id. No foreign key to products: a product
# deleted later stays in the history it is part of.
events = Table(
    "events",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("event_id", Text, unique=True),
    Column("user_id", Text, nullable=False),
    Column("product_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("ts", Float, nullable=False),
    Index("events_user", "user_id", "ts"),
    sqlite_autoincrement=True,
)

# API keys: only the SHA-256 of a key's secret is stored (see api/auth.py).
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("scopes", Text, nullable=False),  # space-separated
    Column("secret_sha256", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("revoked", Float),
)

# The catalogue's change log: every transaction that adds or removes a photo or changes a product appends
# its changes here, in commit order (PostgreSQL writers take CHANGE_LOG_LOCK before appending). Replicas
# follow it to keep their own vector index and read caches in step with the others (api/catalog/follow.py).
catalog_changes = Table(
    "catalog_changes",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("origin", Text, nullable=False),  # the process that wrote it: it has applied it already
    Column("kind", Text, nullable=False),  # image_added | image_removed | product
    Column("product_id", Text, nullable=False),
    Column("image_id", BigInteger),
    Column("at", Float, nullable=False),
    Index("catalog_changes_at", "at"),
    sqlite_autoincrement=True,
)

# Photo bytes kept in the database, when it is the photo store (api/catalog/photos.py): one row per photo,
# gone with it in the same transaction.
photo_data = Table(
    "photo_data",
    metadata,
    Column("image_id", Id, ForeignKey("images.image_id", ondelete="CASCADE"), primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

# Token buckets of the rate limit, shared by the replicas of one PostgreSQL database (api/limits.py).
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("caller", Text, primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated", Float, nullable=False),
)

# Bulk-tagging jobs, one queue for every replica (api/tagging/jobs.py): a replica takes a queued job, or a
# running one whose lease ran out (its replica died), under FOR UPDATE SKIP LOCKED.
tagging_jobs = Table(
    "tagging_jobs",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("state", Text, nullable=False),  # queued | running | done | failed | cancelled
    Column("created", Float, nullable=False),
    Column("data", Text, nullable=False),  # the rest of the job (api.tagging.jobs.Job) as JSON
    Column("meta", Text, nullable=False, server_default="{}"),  # what its results were made with
    Column("owner", Text),  # the replica running it
    Column("lease_until", Float),  # ... until then; a lease that ran out frees the job for another
    Column("cancel_requested", Integer, nullable=False, server_default="0"),
    Index("tagging_jobs_state", "state", "created"),
)

# The uploaded zip or CSV of each job, in parts, so any replica can run it and serve its photos.
tagging_inputs = Table(
    "tagging_inputs",
    metadata,
    Column("job_id", Text, ForeignKey("tagging_jobs.job_id", ondelete="CASCADE"), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

# One row per tagged photo: its result, embedding and layout vector (api/tagging/state.py SqlTagState).
# Each batch is one transaction: a job resumed on another replica starts after the last committed batch.
tagging_results = Table(
    "tagging_results",
    metadata,
    Column("job_id", Text, ForeignKey("tagging_jobs.job_id", ondelete="CASCADE"), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("ord", Integer, nullable=False),
    Column("row", Text, nullable=False),
    Column("embedding", LargeBinary),
    Column("layout", LargeBinary),
    Index("tagging_results_order", "job_id", "ord"),
)

# A merchandiser's decision on one tagged photo (api/tagging/review.py): add it to a product, create a product
# from it, or skip it. `outcome` stays empty until an apply settles it (applied | skipped | failed), so an
# apply only ever acts on the unsettled ones: applying twice changes nothing more.
tagging_decisions = Table(
    "tagging_decisions",
    metadata,
    Column("job_id", Text, ForeignKey("tagging_jobs.job_id", ondelete="CASCADE"), primary_key=True),
    Column("key", Text, primary_key=True),
    Column("action", Text, nullable=False),  # add_photo | new_product | skip
    Column("product_id", Text),
    Column("product", Text),  # new_product: the new product's fields, as JSON
    Column("decided_at", Float, nullable=False),
    Column("outcome", Text),
    Column("error", Text),
    Column("applied_at", Float),
)

# A photo's vector for a model other than the one that wrote it (`images.embedding` is the vector of
# `images.model_id`): what a model switch computes before it serves, and what a replica still on another
# version reads during a rollout (api/catalog/sql_embeddings.py). Kept per model, so switching back is free.
image_embeddings = Table(
    "image_embeddings",
    metadata,
    Column("image_id", Id, ForeignKey("images.image_id", ondelete="CASCADE"), primary_key=True),
    Column("model_id", Text, primary_key=True),
    Column("embedding", LargeBinary, nullable=False),
)

# The model version every replica should serve, per kind ("vision", "shopper"): a switch is a row here,
# which each replica follows by itself (api/model_switch.py).
served_models = Table(
    "served_models",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("model_dir", Text, nullable=False),
    Column("requested_at", Float, nullable=False),
)
