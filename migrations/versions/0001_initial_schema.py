"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), server_default="validating", nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("pause_message", sa.Text(), nullable=True),
        sa.Column("resume_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("models", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column(
            "options",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("source_name", sa.Text(), nullable=True),
        sa.Column("source_sha256", sa.Text(), nullable=True),
        sa.Column("total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("invalid_lines", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "pause_reason IS NULL OR pause_reason IN ('quota', 'budget', 'credits', 'auth')",
            name="pause_reason_known",
        ),
        sa.CheckConstraint(
            "status IN ('validating', 'in_progress', 'paused', 'finalizing', 'completed', 'failed', 'cancelling', 'cancelled')",
            name="status_known",
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "batch_active_idx",
        "batch",
        ["status"],
        unique=False,
        postgresql_where=sa.text("status IN ('in_progress', 'cancelling')"),
    )
    op.create_index("batch_source_sha256_idx", "batch", ["source_sha256"], unique=False)
    op.create_table(
        "request",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("models", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("chain_pos", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')", name="status_known"
        ),
        sa.ForeignKeyConstraint(["batch_id"], ["batch.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "custom_id", name="request_batch_custom_id_key"),
    )
    op.create_index("request_batch_status_idx", "request", ["batch_id", "status"], unique=False)
    op.create_index(
        "request_queued_idx",
        "request",
        ["batch_id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending' AND enqueued_at IS NOT NULL"),
    )
    op.create_index(
        "request_running_idx",
        "request",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index(
        "request_unqueued_idx",
        "request",
        ["batch_id", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending' AND enqueued_at IS NULL"),
    )
    op.create_table(
        "attempt",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.Text(), server_default="in_flight", nullable=False),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("models_sent", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("generation_id", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("reasoning_tokens", sa.Integer(), nullable=True),
        sa.Column("cached_tokens", sa.Integer(), nullable=True),
        sa.Column("cost", sa.Numeric(), nullable=True),
        sa.Column("cost_estimated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('in_flight', 'success', 'retry', 'fallback', 'park', 'fail', 'abandoned')",
            name="outcome_known",
        ),
        sa.ForeignKeyConstraint(["batch_id"], ["batch.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["request_id"], ["request.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "number", name="attempt_request_number_key"),
    )
    op.create_index("attempt_batch_idx", "attempt", ["batch_id"], unique=False)
    op.create_table(
        "result",
        sa.Column("request_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt_id", sa.BigInteger(), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.Column("finish_reason", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["attempt_id"], ["attempt.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["request_id"], ["request.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("request_id"),
    )


def downgrade() -> None:
    op.drop_table("result")
    op.drop_index("attempt_batch_idx", table_name="attempt")
    op.drop_table("attempt")
    op.drop_index(
        "request_unqueued_idx",
        table_name="request",
        postgresql_where=sa.text("status = 'pending' AND enqueued_at IS NULL"),
    )
    op.drop_index("request_running_idx", table_name="request", postgresql_where=sa.text("status = 'running'"))
    op.drop_index(
        "request_queued_idx",
        table_name="request",
        postgresql_where=sa.text("status = 'pending' AND enqueued_at IS NOT NULL"),
    )
    op.drop_index("request_batch_status_idx", table_name="request")
    op.drop_table("request")
    op.drop_index("batch_source_sha256_idx", table_name="batch")
    op.drop_index(
        "batch_active_idx",
        table_name="batch",
        postgresql_where=sa.text("status IN ('in_progress', 'cancelling')"),
    )
    op.drop_table("batch")
