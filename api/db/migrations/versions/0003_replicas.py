"""What several replicas on one database share besides the catalogue: the change log they follow, photo
bytes (when the database is the photo store) and the rate limit's token buckets.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "catalog_changes",
        sa.Column("seq", Id, primary_key=True, autoincrement=True),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("product_id", sa.Text, nullable=False),
        sa.Column("image_id", sa.BigInteger),
        sa.Column("at", sa.Float, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("catalog_changes_at", "catalog_changes", ["at"])
    op.create_table(
        "photo_data",
        sa.Column("image_id", Id, sa.ForeignKey("images.image_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "rate_limits",
        sa.Column("caller", sa.Text, primary_key=True),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
    op.drop_table("photo_data")
    op.drop_index("catalog_changes_at", "catalog_changes")
    op.drop_table("catalog_changes")
