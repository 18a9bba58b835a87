"""The catalogue as the first version kept it in SQLite: products, photos with embeddings, shopper events.

A data dir from before the migrations has exactly these tables and is stamped at this revision instead
(api.db.migrate), so it upgrades in place.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("product_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("fine_category", sa.Text, nullable=False),
        sa.Column("coarse_category", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("attributes", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("products_fine", "products", ["fine_category"])
    op.create_index("products_coarse", "products", ["coarse_category"])
    op.create_table(
        "images",
        sa.Column("image_id", Id, primary_key=True, autoincrement=True),
        sa.Column("product_id", sa.Text, sa.ForeignKey("products.product_id", ondelete="CASCADE"), nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("product_id", "sha256"),
        sqlite_autoincrement=True,
    )
    op.create_index("images_product", "images", ["product_id"])
    op.create_table(
        "events",
        sa.Column("seq", Id, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Text, unique=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("product_id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("events_user", "events", ["user_id", "ts"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("images")
    op.drop_table("products")
