"""the dashboard's batch list: newest first, by an index

The list of a `--no-auth` server reads the newest batches of all; without an index on their creation time each
page sorted every batch row. A keyed owner's list already walks `api_batch_owner_created_idx`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("batch_created_idx", "batch", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("batch_created_idx", table_name="batch")
