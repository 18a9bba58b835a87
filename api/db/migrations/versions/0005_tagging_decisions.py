"""Merchandisers' decisions on the photos of a tagging job, and what applying them did.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tagging_decisions",
        sa.Column("job_id", sa.Text, sa.ForeignKey("tagging_jobs.job_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("product_id", sa.Text),
        sa.Column("product", sa.Text),
        sa.Column("decided_at", sa.Float, nullable=False),
        sa.Column("outcome", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("applied_at", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("tagging_decisions")
