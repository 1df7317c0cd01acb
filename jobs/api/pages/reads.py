"""What the dashboard reads from Postgres: batches with their tallies, never a scan of a batch's requests.

Every statement here reads `batch` rows and the tally tables the triggers keep (a few shard rows per batch,
model, error code, try count or minute), so a page costs the same for a batch of ten requests or a million.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.core.constants import CHART_READ_SECONDS, PAGE_RATE_MINUTES
from jobs.core.sql import states
from jobs.submission.estimate import Estimate

__all__ = [
    "BatchLine",
    "BatchTallies",
    "ErrorLine",
    "MinuteLine",
    "ModelLine",
    "Named",
    "read_batch",
    "read_batch_page",
    "read_estimate",
    "read_named",
    "read_running",
    "read_tallies",
]

# Batches whose chart rows an instance keeps at once; past this the memory is emptied and refills.
CHART_MEMORY_BATCHES = 256

_COUNTS = ("pending", "running", "remote", "completed", "failed", "cancelled")

# The batches of a page (`page`: their ids and the time they are listed by), each with its summed tally, the
# requests it finished over the last few whole minutes (its rate), and whether only free models answered it
# (the backslash before the colon of `:free` keeps SQLAlchemy from taking it for a bind parameter).
_BATCH_ROWS = f"""
    SELECT b.id, b.name, b.status, b.pause_reason, b.pause_message, b.resume_at, b.models, b.simulated,
           b.options ? 'vote' AS vote, b.priority, b.max_cost, b.created_at, b.started_at, b.finished_at, b.total,
           {", ".join(f"t.{c}" for c in _COUNTS)}, t.calls, t.cost, t.prompt_tokens, t.completion_tokens,
           m.recent, m.since, f.free_served
    FROM page p JOIN batch b ON b.id = p.id
    LEFT JOIN LATERAL (
        SELECT {", ".join(f"coalesce(sum(s.{c}), 0) AS {c}" for c in _COUNTS)},
               coalesce(sum(s.calls), 0) AS calls, coalesce(sum(s.cost), 0) AS cost,
               coalesce(sum(s.prompt_tokens), 0) AS prompt_tokens,
               coalesce(sum(s.completion_tokens), 0) AS completion_tokens
        FROM batch_tally s WHERE s.batch_id = b.id
    ) t ON true
    LEFT JOIN LATERAL (
        SELECT coalesce(sum(mt.answers + mt.failed), 0) AS recent,
               date_trunc('minute', now()) - interval '{PAGE_RATE_MINUTES} minutes' AS since
        FROM batch_minute_tally mt
        WHERE mt.batch_id = b.id
          AND mt.minute >= date_trunc('minute', now()) - interval '{PAGE_RATE_MINUTES} minutes'
    ) m ON true
    LEFT JOIN LATERAL (
        SELECT bool_and(ft.model LIKE '%\\:free') AS free_served
        FROM batch_model_tally ft WHERE ft.batch_id = b.id AND ft.model <> '' AND ft.answers > 0
    ) f ON true
    ORDER BY p.at DESC, p.id DESC
"""  # noqa: S608 - built from this module's constants; values are bound parameters


# The page's ids come first, off an index and limited, so only they are summed: an owner's from
# `api_batch_owner_created_idx`, every batch (a `--no-auth` server's) from `batch_created_idx`.
def _batches_of(page: str) -> TextClause:
    """The batch rows of the batches `page` selects (each an `id`, and the `at` it is listed by)."""
    return text(f"WITH page AS ({page}) {_BATCH_ROWS}")


_OWNER_PAGE = _batches_of(
    "SELECT batch_id AS id, created_at AS at FROM api_batch WHERE owner = :owner"
    " AND (CAST(:before_at AS timestamptz) IS NULL OR (created_at, batch_id) < (:before_at, :before_id))"
    " ORDER BY created_at DESC, batch_id DESC LIMIT :limit"
)
_ALL_PAGE = _batches_of(
    "SELECT id, created_at AS at FROM batch"
    " WHERE CAST(:before_at AS timestamptz) IS NULL OR (created_at, id) < (:before_at, :before_id)"
    " ORDER BY created_at DESC, id DESC LIMIT :limit"
)
_OWNER_ONE = _batches_of(
    "SELECT batch_id AS id, created_at AS at FROM api_batch WHERE batch_id = :id AND owner = :owner"
)
_ALL_ONE = _batches_of("SELECT id, created_at AS at FROM batch WHERE id = :id")
# A name means the latest batch of that name the viewer may see, as on the command line (`resolve_batch`); an
# owner's from its own batches only, so another owner's newer batch of the same name neither hides its own nor
# shows through. No index holds names: the owner's batches are walked by `api_batch_owner_created_idx`, every
# batch (a `--no-auth` server's) is a scan of the batch rows, read only when a page is asked for by a name.
_OWNER_NAMED = text(
    "SELECT b.id, count(*) OVER () AS named FROM api_batch a JOIN batch b ON b.id = a.batch_id"
    " WHERE a.owner = :owner AND b.name = :name ORDER BY b.created_at DESC, b.id DESC LIMIT 1"
)
_ALL_NAMED = text(
    "SELECT id, count(*) OVER () AS named FROM batch WHERE name = :name"
    " ORDER BY created_at DESC, id DESC LIMIT 1"
)
# The running batches the fleet page lists with the worker slots each holds: on the index of active batches.
_OWNER_RUNNING = _batches_of(
    states(
        "SELECT b.id, b.created_at AS at FROM batch b JOIN api_batch a ON a.batch_id = b.id"
        " WHERE b.status = {B.IN_PROGRESS} AND a.owner = :owner ORDER BY b.created_at DESC LIMIT :limit"
    )
)
_ALL_RUNNING = _batches_of(
    states(
        "SELECT id, created_at AS at FROM batch WHERE status = {B.IN_PROGRESS}"
        " ORDER BY created_at DESC LIMIT :limit"
    )
)
_OWNER_CURSOR = text("SELECT created_at FROM api_batch WHERE batch_id = :id AND owner = :owner")
_ALL_CURSOR = text("SELECT created_at FROM batch WHERE id = :id")

_MODELS = text(
    """
    SELECT model, sum(calls) AS calls, sum(answers) AS answers, sum(fallbacks) AS fallbacks,
           sum(reused) AS reused, sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens, sum(cost) AS cost, sum(estimated) > 0 AS estimated
    FROM batch_model_tally WHERE batch_id = :id
    GROUP BY model HAVING sum(calls) <> 0 OR sum(answers) <> 0 OR sum(reused) <> 0
    ORDER BY sum(cost) DESC, sum(answers) DESC, model
    """
)
_ERRORS = text(
    """
    SELECT code, sum(count) AS calls,
           (array_agg(last_message ORDER BY last_at DESC NULLS LAST))[1] AS last_message, max(last_at) AS last_at
    FROM batch_error_tally WHERE batch_id = :id
    GROUP BY code HAVING sum(count) <> 0 ORDER BY sum(count) DESC, code
    """
)
_TRIES = text(
    """
    SELECT tries, sum(requests) AS requests FROM batch_tries_tally WHERE batch_id = :id
    GROUP BY tries HAVING sum(requests) <> 0 ORDER BY tries
    """
)
# Answers that needed a correction (a reply failed its schema first), on the partial index of `invalid_output`
# attempts (revision 0016).
_CORRECTED = text(
    states(
        """
        SELECT count(DISTINCT a.request_id) FROM attempt a JOIN request r ON r.id = a.request_id
        WHERE a.batch_id = :id AND a.error_code = 'invalid_output' AND r.status = {R.COMPLETED}
        """
    )
)
# The batch's minutes in at most `:buckets` equal spans from its start: a day-long batch is a few thousand
# minute rows, read by the tally's primary key.
_MINUTES = text(
    """
    SELECT date_bin(:bucket, minute, :origin) AS at, model,
           sum(answers) AS answers, sum(failed) AS failed, sum(cost) AS cost
    FROM batch_minute_tally WHERE batch_id = :id
    GROUP BY 1, 2 ORDER BY 1, 2
    """
)


@dataclass(slots=True, frozen=True)
class BatchLine:
    """One batch as the list and its page show it: its row, summed tally and recent pace."""

    id: str
    name: str | None
    status: str
    pause_reason: str | None
    pause_message: str | None
    resume_at: datetime | None
    models: list[str]
    simulated: bool
    max_cost: Decimal | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    total: int
    counts: dict[str, int]
    calls: int
    cost: Decimal
    prompt_tokens: int
    completion_tokens: int
    # Requests finished since `recent_since` (whole minutes back from now, on Postgres's clock).
    recent: int
    recent_since: datetime
    # Every model that answered so far is a free one (None before any answer): what a batch whose lines
    # name their own models is taken to be bound for, since its requests are not read.
    free_served: bool | None = None
    # Which batches run first: `urgent`, `normal` or `background`.
    priority: str = "normal"
    # Its models vote (each answers every record) rather than make a fallback chain.
    vote: bool = False

    @property
    def done(self) -> int:
        """Requests finished either way."""
        return self.counts["completed"] + self.counts["failed"] + self.counts["cancelled"]

    @property
    def answered_or_failed(self) -> int:
        """Requests that came to an answer or a failure: what the progress bar fills with (cancelled ones did not)."""
        return self.counts["completed"] + self.counts["failed"]

    @property
    def remaining(self) -> int:
        """Requests still to finish (those in remote batches of the batch lane too)."""
        return self.counts["pending"] + self.counts["running"] + self.counts.get("remote", 0)


def _line(row: Any) -> BatchLine:
    return BatchLine(
        id=row.id,
        name=row.name,
        status=row.status,
        pause_reason=row.pause_reason,
        pause_message=row.pause_message,
        resume_at=row.resume_at,
        models=list(row.models),
        simulated=bool(row.simulated),
        priority=str(row.priority),
        max_cost=row.max_cost,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        total=max(int(row.total), sum(int(getattr(row, c)) for c in _COUNTS)),
        counts={c: int(getattr(row, c)) for c in _COUNTS},
        calls=int(row.calls),
        cost=Decimal(row.cost),
        prompt_tokens=int(row.prompt_tokens),
        completion_tokens=int(row.completion_tokens),
        recent=int(row.recent),
        recent_since=row.since,
        free_served=row.free_served,
        vote=bool(row.vote),
    )


async def read_batch_page(
    conn: AsyncConnection, owner: str | None, before: str | None, limit: int
) -> tuple[list[BatchLine], bool]:
    """A page of the owner's batches (every batch for None), newest first, older than the batch `before`; and
    whether more follow. A `before` that is not the owner's batch gives an empty page."""
    params: dict[str, object] = {"owner": owner, "before_at": None, "before_id": before, "limit": limit + 1}
    if before is not None:
        cursor = _ALL_CURSOR if owner is None else _OWNER_CURSOR
        params["before_at"] = (
            await conn.execute(cursor, {"id": before, "owner": owner})
        ).scalar_one_or_none()
        if params["before_at"] is None:
            return [], False
    rows = (await conn.execute(_ALL_PAGE if owner is None else _OWNER_PAGE, params)).all()
    return [_line(r) for r in rows[:limit]], len(rows) > limit


async def read_running(conn: AsyncConnection, owner: str | None, limit: int) -> list[BatchLine]:
    """The owner's running batches (every running batch for None), newest first."""
    statement = _ALL_RUNNING if owner is None else _OWNER_RUNNING
    return [_line(r) for r in await conn.execute(statement, {"owner": owner, "limit": limit})]


async def read_batch(conn: AsyncConnection, owner: str | None, batch_id: str) -> BatchLine | None:
    """The owner's batch (any batch for None), or None: another owner's batch is not there either."""
    statement = _ALL_ONE if owner is None else _OWNER_ONE
    row = (await conn.execute(statement, {"owner": owner, "id": batch_id})).one_or_none()
    return None if row is None else _line(row)


@dataclass(slots=True, frozen=True)
class Named:
    """The latest batch of a name, and how many batches have that name."""

    latest: str
    count: int


async def read_named(conn: AsyncConnection, owner: str | None, name: str) -> Named | None:
    """The latest of the owner's batches named `name` (of every batch for None) and how many of them have that
    name; None when none has."""
    statement = _ALL_NAMED if owner is None else _OWNER_NAMED
    row = (await conn.execute(statement, {"owner": owner, "name": name})).one_or_none()
    return None if row is None else Named(latest=str(row.id), count=int(row.named))


@dataclass(slots=True, frozen=True)
class ModelLine:
    """Calls, answers, fallbacks, tokens and spend of one model that served ('' for calls with no answer)."""

    model: str
    calls: int
    answers: int
    # Answers it gave as a fallback: the request's chain named another model first.
    fallbacks: int
    reused: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    estimated: bool


@dataclass(slots=True, frozen=True)
class ErrorLine:
    """Failed calls with one error code, and the latest message."""

    code: str
    count: int
    last_message: str | None
    last_at: datetime | None


@dataclass(slots=True, frozen=True)
class MinuteLine:
    """One span of the batch's life for one model ('' holds failed requests)."""

    at: datetime
    model: str
    answers: int
    failed: int
    cost: Decimal


@dataclass(slots=True, frozen=True)
class BatchTallies:
    """Everything the batch page shows beside its counts."""

    models: list[ModelLine] = field(default_factory=list)
    errors: list[ErrorLine] = field(default_factory=list)
    tries: list[tuple[int, int]] = field(default_factory=list)
    minutes: list[MinuteLine] = field(default_factory=list)
    bucket: timedelta = timedelta(minutes=1)
    # Answers that came after at least one reply failing the request's JSON schema.
    corrected: int = 0


async def read_tallies(
    conn: AsyncConnection,
    batch: BatchLine,
    now: datetime,
    spans: int,
    memory: dict[tuple[str, timedelta], tuple[float, list[Any]]],
) -> BatchTallies:
    """The batch's tallies by model, error code and try count, and its life in at most `spans` spans (those read
    again at most every CHART_READ_SECONDS, kept in `memory`)."""
    origin = (batch.started_at or batch.created_at).replace(second=0, microsecond=0)
    life = max(timedelta(minutes=1), (batch.finished_at or now) - origin)
    bucket = timedelta(minutes=max(1, -(-int(life.total_seconds() // 60 + 1) // spans)))
    params = {"id": batch.id}
    models = [
        ModelLine(
            model=r.model,
            calls=int(r.calls),
            answers=int(r.answers),
            fallbacks=int(r.fallbacks),
            reused=int(r.reused),
            prompt_tokens=int(r.prompt_tokens),
            completion_tokens=int(r.completion_tokens),
            cost=Decimal(r.cost),
            estimated=bool(r.estimated),
        )
        for r in await conn.execute(_MODELS, params)
    ]
    errors = [
        ErrorLine(r.code, int(r.calls), r.last_message, r.last_at)
        for r in await conn.execute(_ERRORS, params)
    ]
    tries = [(int(r.tries), int(r.requests)) for r in await conn.execute(_TRIES, params)]
    corrected = int((await conn.execute(_CORRECTED, params)).scalar_one())
    key = (batch.id, bucket)
    kept = memory.get(key)
    if kept is not None and time.monotonic() - kept[0] < CHART_READ_SECONDS:
        minutes: list[MinuteLine] = kept[1]
    else:
        minutes = [
            MinuteLine(r.at, r.model, int(r.answers), int(r.failed), Decimal(r.cost))
            for r in await conn.execute(_MINUTES, {**params, "bucket": bucket, "origin": origin})
        ]
        if len(memory) >= CHART_MEMORY_BATCHES:
            memory.clear()
        memory[key] = (time.monotonic(), minutes)
    return BatchTallies(models, errors, tries, minutes, bucket, corrected)


_ESTIMATE = text("SELECT estimate FROM batch WHERE id = :id")


async def read_estimate(conn: AsyncConnection, batch_id: str) -> Estimate | None:
    """What the batch was estimated to hold and cost when it was submitted; None before revision 0013."""
    kept = (await conn.execute(_ESTIMATE, {"id": batch_id})).scalar_one_or_none()
    return None if kept is None else Estimate.from_json(kept)
