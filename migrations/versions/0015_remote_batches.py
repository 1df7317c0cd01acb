"""the batch lane: remote batches of OpenRouter's Batch API, and the lane in the tallies

`remote_batch` holds one row per remote batch orbatch makes, written with its requests (`request.remote_batch_id`)
before the create is sent, so that a crash at any point leaves a row to recover from. A request in the batch lane
is `remote` (a new request status) from its submit until its remote batch's line is stored or the remote batch
ends without one. `batch.lane` is how a batch was submitted (`live`, `batch`, `auto`) and `batch.lane_note` what
the lane had to say once. Each attempt says its lane (`attempt.lane`, and the remote batch of a line).

The tallies learn the lane: `batch_tally.remote` counts the requests in the batch lane, and `batch_model_tally`
is keyed by lane as well as model, so `usage` shows what went at the batch price apart from live calls. The
trigger functions of revision 0006 are replaced by the same ones with those two changes (a served model with the
`:batch` suffix is no fallback from its base model).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-12
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUSES_BEFORE = "'pending', 'running', 'completed', 'failed', 'cancelled'"
_STATUSES_AFTER = "'pending', 'running', 'remote', 'completed', 'failed', 'cancelled'"
_LANES = "'live', 'batch', 'auto'"
_REMOTE_STATES = "'ready', 'sending', 'running', 'collecting', 'done', 'refused'"
_TERMINAL = "('completed', 'failed', 'cancelled')"
_TOKENS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")


def _add(table_alias: str, columns: Sequence[str]) -> str:
    return ", ".join(f"{c} = {table_alias}.{c} + excluded.{c}" for c in columns)


# --- the tally functions of revision 0006, built with or without the lane ---------------------------------
# The text below is 0006's, generated the same way, with `remote` among the counted statuses and `lane` in the
# model tally's key when `lane` is true (the downgrade builds them without).


def _request_effects(lane: bool) -> str:
    counts = ("pending", "running", "completed", "failed", "cancelled", *(("remote",) if lane else ()))
    sums = ", ".join(
        f"sum((became IS NOT DISTINCT FROM '{c}')::int - (was IS NOT DISTINCT FROM '{c}')::int)"
        for c in counts
    )
    return f"""
    counts AS (
        INSERT INTO batch_tally AS t (batch_id, shard, {", ".join(counts)})
        SELECT batch_id, id % 8, {sums}
        FROM changed GROUP BY 1, 2
        ON CONFLICT (batch_id, shard) DO UPDATE SET {_add("t", counts)}
        RETURNING 1
    ), minutes AS (
        INSERT INTO batch_minute_tally AS t (batch_id, minute, model, shard, failed)
        SELECT batch_id, date_trunc('minute', now()), '', id % 4, count(*)
        FROM changed WHERE became = 'failed' GROUP BY batch_id, id % 4
        ON CONFLICT (batch_id, minute, model, shard) DO UPDATE SET failed = t.failed + excluded.failed
        RETURNING 1
    )
    INSERT INTO batch_tries_tally AS t (batch_id, tries, shard, requests)
    SELECT batch_id, tries, shard, sum(delta) FROM (
        SELECT batch_id, tries, id % 8 AS shard, 1 AS delta FROM changed WHERE became IN {_TERMINAL}
        UNION ALL
        SELECT batch_id, was_tries, id % 8, -1 FROM changed WHERE was IN {_TERMINAL}
    ) d GROUP BY 1, 2, 3
    ON CONFLICT (batch_id, tries, shard) DO UPDATE SET requests = t.requests + excluded.requests
"""  # noqa: S608 - built from this module's constants; values are bound parameters


_REQUEST_SOURCES = {
    "INSERT": "SELECT n.batch_id, n.id, NULL::text AS was, n.status AS became, 0 AS was_tries,"
    " n.attempts AS tries FROM new_rows n",
    "UPDATE": "SELECT n.batch_id, n.id, o.status AS was, n.status AS became, o.attempts AS was_tries,"
    " n.attempts AS tries FROM old_rows o JOIN new_rows n ON n.id = o.id"
    " WHERE o.status IS DISTINCT FROM n.status",
    "DELETE": "SELECT o.batch_id, o.id, o.status AS was, NULL::text AS became, o.attempts AS was_tries,"
    " 0 AS tries FROM old_rows o JOIN batch b ON b.id = o.batch_id",
}


def _attempt_row(lane: bool) -> str:
    return (
        "batch_id, request_id, coalesce(model, '') AS model, outcome, error_code, error_message,"
        " coalesce(finished_at, now()) AS at, cost_estimated, coalesce(cost, 0) AS cost, "
        + ", ".join(f"coalesce({c}, 0) AS {c}" for c in _TOKENS)
        + (", lane" if lane else "")
    )


def _attempt_sources(lane: bool) -> dict[str, str]:
    row = _attempt_row(lane)
    return {
        "INSERT": f"SELECT 1 AS sign, {row} FROM new_rows WHERE outcome <> 'in_flight'",  # noqa: S608 - SQL built from constants
        "UPDATE": f"SELECT 1 AS sign, {row} FROM new_rows WHERE outcome <> 'in_flight'"  # noqa: S608 - SQL built from constants
        f" UNION ALL SELECT -1, {row} FROM old_rows WHERE outcome <> 'in_flight'",
        "DELETE": f"SELECT -1 AS sign, {row} FROM old_rows WHERE outcome <> 'in_flight'"  # noqa: S608 - SQL built from constants
        " AND batch_id IN (SELECT id FROM batch)",
    }


_USAGE = ("calls", "reused", *_TOKENS, "cost")
_USAGE_SUMS = (
    "sum(sign * (outcome <> 'reused')::int), sum(sign * (outcome = 'reused')::int), "
    + ", ".join(f"sum(sign * {c})" for c in _TOKENS)
    + ", sum(sign * cost)"
)


def _attempt_effects(lane: bool) -> str:
    key = "model, lane" if lane else "model"
    groups = "1, 2, 3, 4" if lane else "1, 2, 3"
    return f"""
    batches AS (
        INSERT INTO batch_tally AS t (batch_id, shard, {", ".join(_USAGE)})
        SELECT batch_id, request_id % 8, {_USAGE_SUMS} FROM d GROUP BY 1, 2
        ON CONFLICT (batch_id, shard) DO UPDATE SET {_add("t", _USAGE)}
        RETURNING 1
    ), models AS (
        INSERT INTO batch_model_tally AS t (batch_id, {key}, shard, {", ".join(_USAGE)}, estimated)
        SELECT batch_id, {key}, request_id % 8, {_USAGE_SUMS}, sum(sign * cost_estimated::int)
        FROM d GROUP BY {groups}
        ON CONFLICT (batch_id, {key}, shard) DO UPDATE SET {_add("t", (*_USAGE, "estimated"))}
        RETURNING 1
    ), minutes AS (
        INSERT INTO batch_minute_tally AS t (batch_id, minute, model, shard, calls, cost)
        SELECT batch_id, date_trunc('minute', at), model, request_id % 4,
               sum(sign * (outcome <> 'reused')::int), sum(sign * cost)
        FROM d GROUP BY 1, 2, 3, 4
        ON CONFLICT (batch_id, minute, model, shard) DO UPDATE SET {_add("t", ("calls", "cost"))}
        RETURNING 1
    )
    INSERT INTO batch_error_tally AS t (batch_id, code, shard, count, last_message, last_at)
    SELECT batch_id, error_code, request_id % 8, sum(sign),
           (array_agg(error_message ORDER BY sign DESC, at DESC))[1], max(at) FILTER (WHERE sign > 0)
    FROM d WHERE error_code IS NOT NULL AND outcome <> 'success' GROUP BY 1, 2, 3
    ON CONFLICT (batch_id, code, shard) DO UPDATE SET count = t.count + excluded.count,
        last_message = CASE WHEN excluded.last_at >= coalesce(t.last_at, excluded.last_at)
                            THEN excluded.last_message ELSE t.last_message END,
        last_at = greatest(t.last_at, excluded.last_at)
"""  # noqa: S608 - built from this module's constants; values are bound parameters


def _result_sources(lane: bool) -> dict[str, str]:
    # An answer's lane is its attempt's (a reused answer's attempt is a live one).
    with_lane = ", coalesce((SELECT a.lane FROM attempt a WHERE a.id = {0}.attempt_id), 'live') AS lane"
    insert = "SELECT 1 AS sign, n.request_id, n.created_at, coalesce(n.model, '') AS model"
    delete = "SELECT -1 AS sign, o.request_id, o.created_at, coalesce(o.model, '') AS model"
    return {
        "INSERT": insert + (with_lane.format("n") if lane else "") + " FROM new_rows n",
        "DELETE": delete + (with_lane.format("o") if lane else "") + " FROM old_rows o",
    }


def _result_effects(lane: bool) -> str:
    # A line of a remote batch may be served by the `:batch` variant of the chain's first model: no fallback.
    # (The backslash keeps SQLAlchemy from taking `:batch` for a bind parameter.)
    served = "regexp_replace(s.model, '\\:batch$', '')" if lane else "s.model"
    key = "model, lane" if lane else "model"
    groups = "1, 2, 3, 4" if lane else "1, 2, 3"
    return f"""
    answered AS MATERIALIZED (
        SELECT r.batch_id, s.request_id, s.created_at, s.model, s.sign{", s.lane" if lane else ""},
               ({served} IS DISTINCT FROM (coalesce(r.models, b.models))[1])::int AS fallback
        FROM s JOIN request r ON r.id = s.request_id JOIN batch b ON b.id = r.batch_id
    ), models AS (
        INSERT INTO batch_model_tally AS t (batch_id, {key}, shard, answers, fallbacks)
        SELECT batch_id, {key}, request_id % 8, sum(sign), sum(sign * fallback) FROM answered GROUP BY {groups}
        ON CONFLICT (batch_id, {key}, shard) DO UPDATE
            SET answers = t.answers + excluded.answers, fallbacks = t.fallbacks + excluded.fallbacks
        RETURNING 1
    )
    INSERT INTO batch_minute_tally AS t (batch_id, minute, model, shard, answers)
    SELECT batch_id, date_trunc('minute', created_at), model, request_id % 4, sum(sign)
    FROM answered GROUP BY 1, 2, 3, 4
    ON CONFLICT (batch_id, minute, model, shard) DO UPDATE SET answers = t.answers + excluded.answers
"""  # noqa: S608 - built from this module's constants; values are bound parameters


def _functions(lane: bool) -> list[str]:
    """0006's trigger functions, replaced in place (their triggers stay as they are)."""
    parts = [
        ("request", _REQUEST_SOURCES, "changed", _request_effects(lane)),
        ("attempt", _attempt_sources(lane), "d", _attempt_effects(lane)),
        ("result", _result_sources(lane), "s", _result_effects(lane)),
    ]
    statements = []
    for table, sources, cte, effects in parts:
        for operation, source in sources.items():
            name = f"orbatch_{table}_tally_{operation.lower()}"
            statements.append(
                f"""
                CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$
                BEGIN
                    WITH {cte} AS MATERIALIZED ({source}), {effects};
                    RETURN NULL;
                END
                $fn$
                """
            )
    return statements


def upgrade() -> None:
    op.create_table(
        "remote_batch",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("simulated", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="ready", nullable=False),
        sa.Column("remote_id", sa.Text(), nullable=True),
        sa.Column("remote_status", sa.Text(), nullable=True),
        sa.Column("total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("completed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("answered", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("line_failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("cost", sa.Numeric(), nullable=True),
        sa.Column("provider", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("cancel_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_refused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("misses", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(f"state IN ({_REMOTE_STATES})", name="state_known"),
        sa.ForeignKeyConstraint(["batch_id"], ["batch.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("remote_id"),
    )
    op.create_index("remote_batch_batch_idx", "remote_batch", ["batch_id"])
    op.create_index(
        "remote_batch_due_idx",
        "remote_batch",
        ["next_at"],
        postgresql_where=sa.text("state NOT IN ('done', 'refused')"),
    )
    op.create_index(
        "remote_batch_sending_key",
        "remote_batch",
        ["model", "endpoint", "simulated"],
        unique=True,
        postgresql_where=sa.text("state = 'sending'"),
    )

    op.add_column("batch", sa.Column("lane", sa.Text(), server_default="live", nullable=False))
    op.add_column("batch", sa.Column("lane_note", sa.Text(), nullable=True))
    op.create_check_constraint("lane_known", "batch", f"lane IN ({_LANES})")

    op.drop_constraint("status_known", "request", type_="check")
    op.create_check_constraint("status_known", "request", f"status IN ({_STATUSES_AFTER})")
    op.add_column("request", sa.Column("remote_batch_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        "request_remote_batch_id_fkey",
        "request",
        "remote_batch",
        ["remote_batch_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(
        "request_remote_waiting_idx",
        "request",
        ["batch_id", "id"],
        postgresql_where=sa.text("status = 'remote' AND remote_batch_id IS NULL"),
    )
    op.create_index(
        "request_remote_member_idx",
        "request",
        ["remote_batch_id"],
        postgresql_where=sa.text("status = 'remote' AND remote_batch_id IS NOT NULL"),
    )

    op.add_column("attempt", sa.Column("lane", sa.Text(), server_default="live", nullable=False))
    op.add_column("attempt", sa.Column("remote_batch_id", sa.BigInteger(), nullable=True))
    op.create_check_constraint("lane_known", "attempt", f"lane IN ({_LANES})")
    op.create_index(
        "attempt_remote_line_key",
        "attempt",
        ["remote_batch_id", "request_id"],
        unique=True,
        postgresql_where=sa.text("remote_batch_id IS NOT NULL"),
    )

    op.add_column(
        "batch_tally", sa.Column("remote", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
    )
    op.drop_constraint("batch_model_tally_pkey", "batch_model_tally", type_="primary")
    op.add_column("batch_model_tally", sa.Column("lane", sa.Text(), server_default="live", nullable=False))
    op.create_primary_key(
        "batch_model_tally_pkey", "batch_model_tally", ["batch_id", "model", "lane", "shard"]
    )
    for statement in _functions(lane=True):
        op.execute(statement)


def downgrade() -> None:
    for statement in _functions(lane=False):
        op.execute(statement)
    # The lanes' rows of a model fold into one again.
    op.execute(
        """
        CREATE TEMP TABLE orbatch_model_tally_folded ON COMMIT DROP AS
        SELECT batch_id, model, shard, sum(calls) AS calls, sum(answers) AS answers, sum(fallbacks) AS fallbacks,
               sum(reused) AS reused, sum(prompt_tokens) AS prompt_tokens,
               sum(completion_tokens) AS completion_tokens, sum(reasoning_tokens) AS reasoning_tokens,
               sum(cached_tokens) AS cached_tokens, sum(cost) AS cost, sum(estimated) AS estimated
        FROM batch_model_tally GROUP BY 1, 2, 3
        """
    )
    op.execute("DELETE FROM batch_model_tally")
    op.drop_constraint("batch_model_tally_pkey", "batch_model_tally", type_="primary")
    op.drop_column("batch_model_tally", "lane")
    op.create_primary_key("batch_model_tally_pkey", "batch_model_tally", ["batch_id", "model", "shard"])
    op.execute(
        """
        INSERT INTO batch_model_tally (batch_id, model, shard, calls, answers, fallbacks, reused, prompt_tokens,
                                       completion_tokens, reasoning_tokens, cached_tokens, cost, estimated)
        SELECT * FROM orbatch_model_tally_folded
        """
    )
    op.drop_column("batch_tally", "remote")
    op.drop_index("attempt_remote_line_key", table_name="attempt")
    op.drop_constraint("lane_known", "attempt", type_="check")
    op.drop_column("attempt", "remote_batch_id")
    op.drop_column("attempt", "lane")
    # A request still in the batch lane runs live on the older code.
    op.drop_index("request_remote_member_idx", table_name="request")
    op.drop_index("request_remote_waiting_idx", table_name="request")
    op.drop_constraint("request_remote_batch_id_fkey", "request", type_="foreignkey")
    op.drop_column("request", "remote_batch_id")
    op.execute("UPDATE request SET status = 'pending' WHERE status = 'remote'")
    op.drop_constraint("status_known", "request", type_="check")
    op.create_check_constraint("status_known", "request", f"status IN ({_STATUSES_BEFORE})")
    op.drop_constraint("lane_known", "batch", type_="check")
    op.drop_column("batch", "lane_note")
    op.drop_column("batch", "lane")
    op.drop_index("remote_batch_sending_key", table_name="remote_batch")
    op.drop_index("remote_batch_due_idx", table_name="remote_batch")
    op.drop_index("remote_batch_batch_idx", table_name="remote_batch")
    op.drop_table("remote_batch")
