"""Model switches without a restart: photos' vectors for other model versions, and the version every
replica should serve.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "image_embeddings",
        sa.Column("image_id", Id, sa.ForeignKey("images.image_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("model_id", sa.Text, primary_key=True),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "served_models",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("model_dir", sa.Text, nullable=False),
        sa.Column("requested_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("served_models")
    op.drop_table("image_embeddings")
