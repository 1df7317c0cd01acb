"""dedupe: request fingerprints, reused attempts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTCOMES_BEFORE = "'in_flight', 'success', 'retry', 'fallback', 'park', 'fail', 'abandoned'"


def upgrade() -> None:
    op.add_column("batch", sa.Column("dedupe", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.add_column("request", sa.Column("fingerprint", sa.Text(), nullable=True))
    op.create_index(
        "request_fingerprint_idx",
        "request",
        ["fingerprint"],
        unique=False,
        postgresql_where=sa.text("fingerprint IS NOT NULL"),
    )
    op.add_column("attempt", sa.Column("reused_from", sa.BigInteger(), nullable=True))
    op.drop_constraint("outcome_known", "attempt", type_="check")
    op.create_check_constraint("outcome_known", "attempt", f"outcome IN ({_OUTCOMES_BEFORE}, 'reused')")


def downgrade() -> None:
    op.execute("DELETE FROM attempt WHERE outcome = 'reused'")
    op.drop_constraint("outcome_known", "attempt", type_="check")
    op.create_check_constraint("outcome_known", "attempt", f"outcome IN ({_OUTCOMES_BEFORE})")
    op.drop_column("attempt", "reused_from")
    op.drop_index(
        "request_fingerprint_idx", table_name="request", postgresql_where=sa.text("fingerprint IS NOT NULL")
    )
    op.drop_column("request", "fingerprint")
    op.drop_column("batch", "dedupe")
