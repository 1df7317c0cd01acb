"""budget guard and model price cache

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_price",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("prompt", sa.Numeric(), nullable=True),
        sa.Column("completion", sa.Numeric(), nullable=True),
        sa.Column("request", sa.Numeric(), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.add_column(
        "batch", sa.Column("free_only", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column("batch", sa.Column("max_cost", sa.Numeric(), nullable=True))
    op.add_column("batch", sa.Column("spent", sa.Numeric(), server_default=sa.text("0"), nullable=False))


def downgrade() -> None:
    op.drop_column("batch", "spent")
    op.drop_column("batch", "max_cost")
    op.drop_column("batch", "free_only")
    op.drop_table("model_price")
