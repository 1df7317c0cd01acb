"""OpenAI's `model` of an API batch, kept when the batch is stored

`api_batch.model` is the model every request of the batch is sent to first (a line's own chain, else the
batch's), when that is one model; NULL when its requests start with different ones. Knowing it means reading
every request of the batch, so it is read once, when the batch is stored, and never at a GET. Batches stored
before this revision have it filled in here by the same rule (a batch with no requests: its chain's first
model).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-12
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_batch", sa.Column("model", sa.Text(), nullable=True))
    op.execute(
        """
        UPDATE api_batch a
        SET model = CASE WHEN f.requests = 0 THEN b.models[1] WHEN f.lowest = f.highest THEN f.lowest END
        FROM batch b,
             LATERAL (SELECT count(*) AS requests, min(coalesce(r.models[1], b.models[1])) AS lowest,
                             max(coalesce(r.models[1], b.models[1])) AS highest
                      FROM request r WHERE r.batch_id = b.id) f
        WHERE b.id = a.batch_id
        """
    )


def downgrade() -> None:
    op.drop_column("api_batch", "model")
