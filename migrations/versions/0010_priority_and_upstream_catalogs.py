"""a batch's priority, and the model list kept per upstream

`batch.priority` (`urgent`, `normal`, `background`) orders the batches that can run now in strict tiers; within
a tier the fleet's capacity is shared fairly between owners and their batches (see the feeder's fair queue).

`model_price` held one model list for every upstream: after a submit against one, a submit against another was
checked against the first one's list. It is now keyed by the upstream's base URL too; the rows cached so far are
dropped (they are fetched again at the next submit), as nothing says which upstream they came from.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "batch", sa.Column("priority", sa.Text(), server_default=sa.text("'normal'"), nullable=False)
    )
    op.create_check_constraint("priority_known", "batch", "priority IN ('urgent', 'normal', 'background')")
    op.execute("DELETE FROM model_price")
    op.add_column("model_price", sa.Column("upstream", sa.Text(), nullable=False))
    op.drop_constraint("model_price_pkey", "model_price", type_="primary")
    op.create_primary_key("model_price_pkey", "model_price", ["upstream", "id"])


def downgrade() -> None:
    op.execute("DELETE FROM model_price")
    op.drop_constraint("model_price_pkey", "model_price", type_="primary")
    op.drop_column("model_price", "upstream")
    op.create_primary_key("model_price_pkey", "model_price", ["id"])
    op.drop_constraint("priority_known", "batch", type_="check")
    op.drop_column("batch", "priority")
