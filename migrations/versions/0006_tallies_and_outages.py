"""tallies kept by triggers, the `outage` outcome, simulated batches and batch metadata

A batch's counts, usage by model, errors, minute history and tries per request are kept in tally tables by
statement-level triggers (with transition tables, so a bulk cancel of a million requests is one aggregate, not
a million trigger calls), and every path that changes a request, an attempt or a result keeps them right
without knowing of them. Reads sum a few shard rows instead of scanning the batch.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTCOMES_BEFORE = "'in_flight', 'success', 'retry', 'fallback', 'park', 'fail', 'abandoned', 'reused'"
_OUTCOMES_AFTER = (
    "'in_flight', 'success', 'retry', 'fallback', 'park', 'fail', 'outage', 'abandoned', 'reused'"
)
_TERMINAL = "('completed', 'failed', 'cancelled')"

_COUNTS = ("pending", "running", "completed", "failed", "cancelled")
_TOKENS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")


def _add(table_alias: str, columns: Sequence[str]) -> str:
    return ", ".join(f"{c} = {table_alias}.{c} + excluded.{c}" for c in columns)


# --- requests: counts by status, failed requests by minute, tries per finished request -------------------
# `changed` holds (batch_id, id, was, became, was_tries, tries) for every request whose status moved.
_REQUEST_EFFECTS = f"""
    counts AS (
        INSERT INTO batch_tally AS t (batch_id, shard, {", ".join(_COUNTS)})
        SELECT batch_id, id % 8, {", ".join(f"sum((became IS NOT DISTINCT FROM '{c}')::int - (was IS NOT DISTINCT FROM '{c}')::int)" for c in _COUNTS)}
        FROM changed GROUP BY 1, 2
        ON CONFLICT (batch_id, shard) DO UPDATE SET {_add("t", _COUNTS)}
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
    # A batch being deleted takes its tallies with it: only requests of batches that remain count.
    "DELETE": "SELECT o.batch_id, o.id, o.status AS was, NULL::text AS became, o.attempts AS was_tries,"
    " 0 AS tries FROM old_rows o JOIN batch b ON b.id = o.batch_id",
}

# --- attempts: calls, tokens and cost by batch, model and minute; errors by code -------------------------
# `d` holds each finished attempt's row with `sign` +1 (as it is now) or -1 (as it was), so an attempt that
# leaves `in_flight` counts once, one that is rewritten (abandoned, then answered late) moves, and a statement
# run twice (a retry after a dropped connection) finds nothing in flight and adds nothing.
_ATTEMPT_ROW = (
    "batch_id, request_id, coalesce(model, '') AS model, outcome, error_code, error_message,"
    " coalesce(finished_at, now()) AS at, cost_estimated, coalesce(cost, 0) AS cost, "
    + ", ".join(f"coalesce({c}, 0) AS {c}" for c in _TOKENS)
)
_ATTEMPT_SOURCES = {
    "INSERT": f"SELECT 1 AS sign, {_ATTEMPT_ROW} FROM new_rows WHERE outcome <> 'in_flight'",  # noqa: S608 - SQL built from constants; every value is a bind parameter
    "UPDATE": f"SELECT 1 AS sign, {_ATTEMPT_ROW} FROM new_rows WHERE outcome <> 'in_flight'"  # noqa: S608 - SQL built from constants; every value is a bind parameter
    f" UNION ALL SELECT -1, {_ATTEMPT_ROW} FROM old_rows WHERE outcome <> 'in_flight'",
    "DELETE": f"SELECT -1 AS sign, {_ATTEMPT_ROW} FROM old_rows WHERE outcome <> 'in_flight'"  # noqa: S608 - SQL built from constants; every value is a bind parameter
    " AND batch_id IN (SELECT id FROM batch)",
}
_USAGE = ("calls", "reused", *_TOKENS, "cost")
_USAGE_SUMS = (
    "sum(sign * (outcome <> 'reused')::int), sum(sign * (outcome = 'reused')::int), "
    + ", ".join(f"sum(sign * {c})" for c in _TOKENS)
    + ", sum(sign * cost)"
)
_ATTEMPT_EFFECTS = f"""
    batches AS (
        INSERT INTO batch_tally AS t (batch_id, shard, {", ".join(_USAGE)})
        SELECT batch_id, request_id % 8, {_USAGE_SUMS} FROM d GROUP BY 1, 2
        ON CONFLICT (batch_id, shard) DO UPDATE SET {_add("t", _USAGE)}
        RETURNING 1
    ), models AS (
        INSERT INTO batch_model_tally AS t (batch_id, model, shard, {", ".join(_USAGE)}, estimated)
        SELECT batch_id, model, request_id % 8, {_USAGE_SUMS}, sum(sign * cost_estimated::int)
        FROM d GROUP BY 1, 2, 3
        ON CONFLICT (batch_id, model, shard) DO UPDATE SET {_add("t", (*_USAGE, "estimated"))}
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

# --- results: answers (and fallbacks) by model, answers by minute ----------------------------------------
_RESULT_SOURCES = {
    "INSERT": "SELECT 1 AS sign, n.request_id, n.created_at, coalesce(n.model, '') AS model FROM new_rows n",
    "DELETE": "SELECT -1 AS sign, o.request_id, o.created_at, coalesce(o.model, '') AS model FROM old_rows o",
}
_RESULT_EFFECTS = """
    answered AS MATERIALIZED (
        SELECT r.batch_id, s.request_id, s.created_at, s.model, s.sign,
               (s.model IS DISTINCT FROM (coalesce(r.models, b.models))[1])::int AS fallback
        FROM s JOIN request r ON r.id = s.request_id JOIN batch b ON b.id = r.batch_id
    ), models AS (
        INSERT INTO batch_model_tally AS t (batch_id, model, shard, answers, fallbacks)
        SELECT batch_id, model, request_id % 8, sum(sign), sum(sign * fallback) FROM answered GROUP BY 1, 2, 3
        ON CONFLICT (batch_id, model, shard) DO UPDATE
            SET answers = t.answers + excluded.answers, fallbacks = t.fallbacks + excluded.fallbacks
        RETURNING 1
    )
    INSERT INTO batch_minute_tally AS t (batch_id, minute, model, shard, answers)
    SELECT batch_id, date_trunc('minute', created_at), model, request_id % 4, sum(sign)
    FROM answered GROUP BY 1, 2, 3, 4
    ON CONFLICT (batch_id, minute, model, shard) DO UPDATE SET answers = t.answers + excluded.answers
"""


def _function(name: str, body: str) -> str:
    return f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            {body};
            RETURN NULL;
        END
        $fn$
    """


def _triggers(table: str, sources: dict[str, str], cte: str, effects: str) -> list[str]:
    statements = []
    for operation, source in sources.items():
        name = f"orbatch_{table}_tally_{operation.lower()}"
        statements.append(_function(name, f"WITH {cte} AS MATERIALIZED ({source}), {effects}"))
        tables = {
            "INSERT": "NEW TABLE AS new_rows",
            "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
            "DELETE": "OLD TABLE AS old_rows",
        }[operation]
        statements.append(
            f"CREATE TRIGGER {name} AFTER {operation} ON {table} REFERENCING {tables}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )
    return statements


def _drops(table: str, operations: Iterable[str]) -> list[str]:
    statements = []
    for operation in operations:
        name = f"orbatch_{table}_tally_{operation.lower()}"
        statements += [f"DROP TRIGGER IF EXISTS {name} ON {table}", f"DROP FUNCTION IF EXISTS {name}()"]
    return statements


_BACKFILL = [
    f"""
    INSERT INTO batch_tally (batch_id, shard, {", ".join(_COUNTS)})
    SELECT batch_id, id % 8, {", ".join(f"count(*) FILTER (WHERE status = '{c}')" for c in _COUNTS)}
    FROM request GROUP BY 1, 2
    """,  # noqa: S608 - built from this module's constants; values are bound parameters
    f"""
    WITH d AS (SELECT 1 AS sign, {_ATTEMPT_ROW} FROM attempt WHERE outcome <> 'in_flight'), {_ATTEMPT_EFFECTS}
    """,  # noqa: S608 - built from this module's constants; values are bound parameters
    f"""
    WITH s AS (SELECT 1 AS sign, request_id, created_at, coalesce(model, '') AS model FROM result),
    {_RESULT_EFFECTS}
    """,  # noqa: S608 - built from this module's constants; values are bound parameters
    f"""
    INSERT INTO batch_tries_tally (batch_id, tries, shard, requests)
    SELECT batch_id, attempts, id % 8, count(*) FROM request WHERE status IN {_TERMINAL} GROUP BY 1, 2, 3
    """,  # noqa: S608 - built from this module's constants; values are bound parameters
]


def _cost() -> sa.Column[Any]:
    return sa.Column("cost", sa.Numeric(), server_default=sa.text("0"), nullable=False)


def _tally_table(
    name: str, keys: list[sa.Column[Any]], counters: list[str], extra: Sequence[sa.Column[Any]] = ()
) -> None:
    op.create_table(
        name,
        sa.Column("batch_id", sa.Text(), nullable=False),
        *keys,
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        *[sa.Column(c, sa.BigInteger(), server_default=sa.text("0"), nullable=False) for c in counters],
        *extra,
        sa.ForeignKeyConstraint(["batch_id"], ["batch.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id", *[k.name for k in keys], "shard"),
    )


def upgrade() -> None:
    op.drop_constraint("outcome_known", "attempt", type_="check")
    op.create_check_constraint("outcome_known", "attempt", f"outcome IN ({_OUTCOMES_AFTER})")
    op.add_column("batch", sa.Column("metadata", postgresql.JSONB(), nullable=True))
    op.add_column(
        "batch", sa.Column("simulated", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.create_index(
        "attempt_free_started_idx",
        "attempt",
        ["started_at"],
        postgresql_where=sa.text("models_sent[1] LIKE '%\\:free'"),
    )
    _tally_table("batch_tally", [], [*_COUNTS, "calls", "reused", *_TOKENS], [_cost()])
    _tally_table(
        "batch_model_tally",
        [sa.Column("model", sa.Text(), nullable=False)],
        ["calls", "answers", "fallbacks", "reused", *_TOKENS],
        [_cost(), sa.Column("estimated", sa.BigInteger(), server_default=sa.text("0"), nullable=False)],
    )
    _tally_table(
        "batch_error_tally",
        [sa.Column("code", sa.Text(), nullable=False)],
        ["count"],
        [sa.Column("last_message", sa.Text()), sa.Column("last_at", sa.DateTime(timezone=True))],
    )
    _tally_table(
        "batch_minute_tally",
        [
            sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
            sa.Column("model", sa.Text(), nullable=False),
        ],
        ["answers", "failed", "calls"],
        [_cost()],
    )
    _tally_table("batch_tries_tally", [sa.Column("tries", sa.Integer(), nullable=False)], ["requests"])
    for statement in _BACKFILL:
        op.execute(statement)
    for statement in (
        _triggers("request", _REQUEST_SOURCES, "changed", _REQUEST_EFFECTS)
        + _triggers("attempt", _ATTEMPT_SOURCES, "d", _ATTEMPT_EFFECTS)
        + _triggers("result", _RESULT_SOURCES, "s", _RESULT_EFFECTS)
    ):
        op.execute(statement)


def downgrade() -> None:
    for statement in (
        _drops("result", _RESULT_SOURCES)
        + _drops("attempt", _ATTEMPT_SOURCES)
        + _drops("request", _REQUEST_SOURCES)
    ):
        op.execute(statement)
    for table in (
        "batch_tries_tally",
        "batch_minute_tally",
        "batch_error_tally",
        "batch_model_tally",
        "batch_tally",
    ):
        op.drop_table(table)
    op.drop_index("attempt_free_started_idx", table_name="attempt")
    op.drop_column("batch", "simulated")
    op.drop_column("batch", "metadata")
    op.execute("DELETE FROM attempt WHERE outcome = 'outage'")
    op.drop_constraint("outcome_known", "attempt", type_="check")
    op.create_check_constraint("outcome_known", "attempt", f"outcome IN ({_OUTCOMES_BEFORE})")
