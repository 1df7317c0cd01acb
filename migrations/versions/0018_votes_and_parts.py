"""votes and long documents: the model a request votes with, and the parts of a document too long for its chain

A `--vote` batch sends each record to every model listed: one request per model, all with the record's line and
custom_id, told apart by `request.voter` (NULL for every request that does not vote). The uniqueness of a
custom_id in its batch becomes that of (custom_id, voter), NULLs equal, so a batch without votes keeps exactly
the rule it had.

A `--long split` record whose prompt fits no model of its chain is summarised in parts: `request.split_tokens`
is the most tokens a chunk of its text may hold (NULL: sent whole), and `attempt.part` names the part a call
answered (`chunk 2/7`, `combine 1/2`, `final`; NULL for a whole request), so a request taken again asks only for
the parts not yet answered.

`batch.gold` names the record field holding the right answer, when one was named at submit: the dashboard's
batch page scores the answers against it.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batch", sa.Column("gold", sa.Text(), nullable=True))
    op.add_column("request", sa.Column("voter", sa.Text(), nullable=True))
    op.drop_constraint("request_batch_custom_id_key", "request", type_="unique")
    op.create_unique_constraint(
        "request_batch_custom_id_key",
        "request",
        ["batch_id", "custom_id", "voter"],
        postgresql_nulls_not_distinct=True,
    )
    op.add_column("request", sa.Column("split_tokens", sa.Integer(), nullable=True))
    op.add_column("attempt", sa.Column("part", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("attempt", "part")
    op.drop_column("request", "split_tokens")
    op.execute(
        "DELETE FROM request WHERE voter IS NOT NULL AND voter <> (SELECT min(v.voter) FROM request v"
        " WHERE v.batch_id = request.batch_id AND v.custom_id = request.custom_id)"
    )
    op.drop_constraint("request_batch_custom_id_key", "request", type_="unique")
    op.create_unique_constraint("request_batch_custom_id_key", "request", ["batch_id", "custom_id"])
    op.drop_column("request", "voter")
    op.drop_column("batch", "gold")
