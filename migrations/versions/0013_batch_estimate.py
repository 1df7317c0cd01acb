"""the estimate a batch was submitted with

`orbatch estimate` (and `submit --dry-run`) says what a file's requests hold and may cost before anything is
paid. Every submit now keeps that estimate with its batch (`batch.estimate`, the estimate's JSON: requests,
prompt and completion tokens and the cost range by model), so that `orbatch usage` shows it beside what the
batch actually took. NULL for batches stored before it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batch", sa.Column("estimate", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("batch", "estimate")
