"""Tagging jobs, their uploads and their results in the database: one queue that every replica takes jobs
from, and that survives the replica that ran a job (they had a SQLite file per data dir before).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tagging_jobs",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("meta", sa.Text, nullable=False, server_default="{}"),
        sa.Column("owner", sa.Text),
        sa.Column("lease_until", sa.Float),
        sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("tagging_jobs_state", "tagging_jobs", ["state", "created"])
    op.create_table(
        "tagging_inputs",
        sa.Column("job_id", sa.Text, sa.ForeignKey("tagging_jobs.job_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("part", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "tagging_results",
        sa.Column("job_id", sa.Text, sa.ForeignKey("tagging_jobs.job_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("ord", sa.Integer, nullable=False),
        sa.Column("row", sa.Text, nullable=False),
        sa.Column("embedding", sa.LargeBinary),
        sa.Column("layout", sa.LargeBinary),
    )
    op.create_index("tagging_results_order", "tagging_results", ["job_id", "ord"])


def downgrade() -> None:
    op.drop_table("tagging_results")
    op.drop_table("tagging_inputs")
    op.drop_table("tagging_jobs")
