"""the fields of a batch's records, in the order its input gave them

A record is stored as `jsonb`, which keeps its keys in an order of its own (shorter keys first), so a `.csv` or
`.parquet` written back from a batch of records had its columns shuffled. `batch.record_fields` keeps the fields
in the order they first appear in the input; exports put the records' fields in that order. NULL for a batch of
chat requests, and for batches stored before it (their exports keep the old order).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batch", sa.Column("record_fields", postgresql.ARRAY(sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column("batch", "record_fields")
