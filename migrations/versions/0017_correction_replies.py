"""the invalid reply a correction turn quotes

A reply that fails its request's JSON schema is retried with a follow-up turn that quotes it and says what was
wrong (`feedback`, on unless the batch turned it off). The attempt row keeps that reply (`attempt.reply`,
bounded by the worker), only for `invalid_output` attempts: every other attempt leaves it NULL, and an answer's
content stays where it was, in `result`. A partial index finds a batch's `invalid_output` attempts: `usage` counts the answers that
needed a correction.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("attempt", sa.Column("reply", sa.Text(), nullable=True))
    # `usage` counts the answers that needed a correction from these attempts alone.
    op.create_index(
        "attempt_invalid_output_idx",
        "attempt",
        ["batch_id", "request_id"],
        postgresql_where=sa.text("error_code = 'invalid_output'"),
    )


def downgrade() -> None:
    op.drop_index("attempt_invalid_output_idx", table_name="attempt")
    op.drop_column("attempt", "reply")
