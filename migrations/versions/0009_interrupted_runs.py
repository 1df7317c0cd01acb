"""a batch whose `orbatch run` was stopped waits for it: pause reason `interrupted`

A run's batch is worked by its run (and by workers that share the run's Redis while it runs). When the run is
stopped, the batch is paused with this reason, so a fleet worker or a server's worker does not take it up (and
spend a free tier on it) until the same command runs again or a user resumes it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = "pause_reason IS NULL OR pause_reason IN ('quota', 'budget', 'credits', 'auth')"
_AFTER = "pause_reason IS NULL OR pause_reason IN ('quota', 'budget', 'credits', 'auth', 'interrupted')"


def upgrade() -> None:
    op.drop_constraint("pause_reason_known", "batch", type_="check")
    op.create_check_constraint("pause_reason_known", "batch", _AFTER)


def downgrade() -> None:
    op.execute(
        "UPDATE batch SET status = 'in_progress', pause_reason = NULL WHERE pause_reason = 'interrupted'"
    )
    op.drop_constraint("pause_reason_known", "batch", type_="check")
    op.create_check_constraint("pause_reason_known", "batch", _BEFORE)
