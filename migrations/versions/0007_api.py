"""the HTTP API: keys, stored files, API batches and their callbacks; completion windows and `expired`

A batch created through the API has a completion window (`batch.expires_at`); past it the batch is
`expired`. A trigger stamps `cancelling_at` and `expired_at` whoever changes the status (the CLI, the API, the
feeder), and reopens an API batch's finalization when `retry --failed` runs a finished batch again (its output
files, made from the rows it had then, are dropped: the finalizer makes new ones when it ends again).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES_BEFORE = (
    "'validating', 'in_progress', 'paused', 'finalizing', 'completed', 'failed', 'cancelling', 'cancelled'"
)
_STATUSES_AFTER = _STATUSES_BEFORE + ", 'expired'"

_STATUS_TIMES = """
    CREATE FUNCTION orbatch_batch_status_times() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        IF NEW.status = 'cancelling' THEN
            NEW.cancelling_at := coalesce(NEW.cancelling_at, now());
        ELSIF NEW.status = 'expired' THEN
            NEW.expired_at := coalesce(NEW.expired_at, now());
        END IF;
        IF NEW.status NOT IN ('completed', 'failed', 'cancelled', 'expired') THEN
            UPDATE api_batch SET finalized_at = NULL, output_file_id = NULL, error_file_id = NULL
            WHERE batch_id = NEW.id AND finalized_at IS NOT NULL;
            DELETE FROM api_file WHERE batch_id = NEW.id;
        END IF;
        RETURN NEW;
    END
    $fn$
"""


def _now() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.drop_constraint("status_known", "batch", type_="check")
    op.create_check_constraint("status_known", "batch", f"status IN ({_STATUSES_AFTER})")
    for column in ("expires_at", "expired_at", "cancelling_at"):
        op.add_column("batch", sa.Column(column, sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "batch_expiring_idx",
        "batch",
        ["expires_at"],
        postgresql_where=sa.text(
            "expires_at IS NOT NULL AND status IN ('validating', 'in_progress', 'paused')"
        ),
    )
    op.create_index(
        "batch_expired_idx", "batch", ["expired_at"], postgresql_where=sa.text("status = 'expired'")
    )

    op.create_table(
        "api_key",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("digest", sa.Text(), nullable=True),
        sa.Column("hint", sa.Text(), nullable=False),
        sa.Column("callback_secret", sa.Text(), nullable=False),
        sa.Column("rate_per_minute", sa.Integer(), nullable=True),
        _now(),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("digest"),
    )
    op.create_table(
        "api_file",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=True),
        _now(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("batch_id", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batch.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("api_file_owner_created_idx", "api_file", ["owner", "created_at", "id"])
    op.create_index(
        "api_file_expires_idx", "api_file", ["expires_at"], postgresql_where=sa.text("expires_at IS NOT NULL")
    )
    op.create_index(
        "api_file_batch_idx", "api_file", ["batch_id"], postgresql_where=sa.text("batch_id IS NOT NULL")
    )
    op.create_table(
        "api_file_chunk",
        sa.Column("file_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["api_file.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("file_id", "seq"),
    )
    op.create_table(
        "api_batch",
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("input_file_id", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("completion_window", sa.Text(), nullable=False),
        sa.Column("errors", postgresql.JSONB(), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("output_expires_seconds", sa.Integer(), nullable=True),
        _now(),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("output_file_id", sa.Text(), nullable=True),
        sa.Column("error_file_id", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batch.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id"),
    )
    op.create_index("api_batch_owner_created_idx", "api_batch", ["owner", "created_at", "batch_id"])
    op.create_index(
        "api_batch_unfinalized_idx",
        "api_batch",
        ["batch_id"],
        postgresql_where=sa.text("finalized_at IS NULL"),
    )
    op.create_table(
        "api_callback",
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("given_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _now(),
        sa.ForeignKeyConstraint(["batch_id"], ["batch.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id"),
    )
    op.create_index(
        "api_callback_due_idx",
        "api_callback",
        ["next_at"],
        postgresql_where=sa.text("delivered_at IS NULL AND given_up_at IS NULL"),
    )
    op.execute(_STATUS_TIMES)
    op.execute(
        "CREATE TRIGGER orbatch_batch_status_times BEFORE UPDATE OF status ON batch FOR EACH ROW"
        " WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION orbatch_batch_status_times()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS orbatch_batch_status_times ON batch")
    op.execute("DROP FUNCTION IF EXISTS orbatch_batch_status_times()")
    for table in ("api_callback", "api_batch", "api_file_chunk", "api_file", "api_key"):
        op.drop_table(table)
    op.drop_index("batch_expired_idx", table_name="batch")
    op.drop_index("batch_expiring_idx", table_name="batch")
    for column in ("cancelling_at", "expired_at", "expires_at"):
        op.drop_column("batch", column)
    op.execute("UPDATE batch SET status = 'cancelled' WHERE status = 'expired'")
    op.drop_constraint("status_known", "batch", type_="check")
    op.create_check_constraint("status_known", "batch", f"status IN ({_STATUSES_BEFORE})")
