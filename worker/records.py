"""The task's Postgres writes: take a lease, renew it, and record how the attempt ended, each one statement.

Each write is a single statement, so it is atomic on its own; the worker runs them on an AUTOCOMMIT
engine to spare the BEGIN and COMMIT round trips.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs import usage as usage_queries
from jobs.constants import MAX_MODELS_PER_CALL
from jobs.states import Outcome, PauseReason
from worker.classify import Failure, Success, Usage
from worker.retry import Decision

# A \u0000 escape in JSON text, not preceded by an escaped backslash.
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")

__all__ = [
    "Lease",
    "abandon",
    "complete",
    "fail",
    "free_calls_today",
    "nothing_left",
    "refuse",
    "renew",
    "reuse",
    "take_lease",
    "twin_in_flight",
    "unlease",
]


@dataclass(slots=True, frozen=True)
class Lease:
    """A request this worker now runs: what to send and the attempt row that records the call."""

    request_id: int
    batch_id: str
    attempt_id: int
    number: int
    failures: int
    chain_pos: int
    chain: list[str]
    models_sent: list[str]
    max_attempts: int
    free_only: bool
    fingerprint: str | None
    body: dict[str, Any]


# The lease and the attempt row are one statement: a worker that dies after it leaves a lease that
# expires and an in-flight attempt that the feeder marks abandoned, never a call with no record.
_TAKE_LEASE = text(
    f"""
    WITH leased AS (
        UPDATE request r SET status = 'running', attempts = r.attempts + 1, lease_owner = :owner,
               lease_expires_at = now() + make_interval(secs => :lease_seconds), enqueued_at = NULL
        FROM batch b
        WHERE r.id = :request_id AND r.attempts = :attempts AND r.status = 'pending'
          AND r.next_attempt_at <= now() AND b.id = r.batch_id AND b.status = 'in_progress'
        RETURNING r.id, r.batch_id, r.attempts, r.failures, r.body, b.max_attempts, b.free_only, r.fingerprint,
                  coalesce(r.models, b.models) AS chain,
                  CASE WHEN r.chain_pos < cardinality(coalesce(r.models, b.models)) THEN r.chain_pos ELSE 0 END
                      AS chain_pos
    ), attempt_row AS (
        INSERT INTO attempt (request_id, batch_id, number, worker, models_sent)
        SELECT id, batch_id, attempts, :owner, chain[chain_pos + 1 : chain_pos + {MAX_MODELS_PER_CALL}] FROM leased
        RETURNING id, models_sent
    )
    SELECT leased.*, attempt_row.id AS attempt_id, attempt_row.models_sent FROM leased, attempt_row
    """
)

_RENEW = text(
    "UPDATE request SET lease_expires_at = now() + make_interval(secs => :lease_seconds)"
    " WHERE id = :request_id AND status = 'running' AND lease_owner = :owner"
)

_ATTEMPT_SET = """
    UPDATE attempt SET started_at = coalesce(:started_at, started_at), finished_at = now(), latency_ms = :latency_ms, http_status = :http_status,
           outcome = :outcome, model = :model, provider = :provider, generation_id = :generation_id,
           prompt_tokens = :prompt_tokens, completion_tokens = :completion_tokens,
           reasoning_tokens = :reasoning_tokens, cached_tokens = :cached_tokens, cost = :cost,
           cost_estimated = :cost_estimated,
           error_code = :error_code, error_message = :error_message
    WHERE id = :attempt_id
"""

# Adds a call's cost to its batch's spend when the batch has a cap, and pauses the batch once the cap is
# reached: no call starts after that, so the overshoot is at most the calls already in flight.
_SPEND = """
    UPDATE batch SET spent = spent + :cost,
           status = CASE WHEN status = 'in_progress' AND spent + :cost >= max_cost THEN 'paused' ELSE status END,
           pause_reason = CASE WHEN status = 'in_progress' AND spent + :cost >= max_cost THEN 'budget'
                               ELSE pause_reason END,
           pause_message = CASE WHEN status = 'in_progress' AND spent + :cost >= max_cost
               THEN 'The batch has spent ' || (spent + :cost)::text || ' USD, reaching its --max-cost of '
                    || max_cost::text || ' USD. Raise it with `orbatch resume ' || id || ' --max-cost USD`.'
               ELSE pause_message END
    WHERE id = :batch_id AND max_cost IS NOT NULL AND CAST(:cost AS numeric) > 0
    RETURNING id
"""

# Completes the request whoever holds it now: a slow worker whose lease was taken over still has a
# good answer. The result's primary key is the request, so a second answer is never stored.
_COMPLETE = text(
    f"""
    WITH attempt_done AS ({_ATTEMPT_SET} RETURNING id),
    spend AS ({_SPEND}),
    completed AS (
        UPDATE request SET status = 'completed', finished_at = now(), lease_owner = NULL,
               lease_expires_at = NULL, enqueued_at = NULL, last_error = NULL
        WHERE id = :request_id AND status IN ('running', 'pending')
        RETURNING id
    )
    INSERT INTO result (request_id, attempt_id, body, content, finish_reason, model)
    SELECT completed.id, :attempt_id, CAST(:body AS jsonb), :content, :finish_reason, :model
    FROM completed, attempt_done
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
    """
)

# Only the lease holder moves the request on; a worker that lost its lease records its attempt only.
_FAIL = text(
    f"""
    WITH attempt_done AS ({_ATTEMPT_SET} RETURNING id),
    spend AS ({_SPEND}),
    moved AS (
        UPDATE request SET status = :status, failures = :failures, chain_pos = :chain_pos,
               next_attempt_at = now() + make_interval(secs => :delay_seconds), last_error = :error_message,
               lease_owner = NULL, lease_expires_at = NULL, enqueued_at = NULL,
               finished_at = CASE WHEN :status = 'failed' THEN now() END
        WHERE id = :request_id AND status = 'running' AND lease_owner = :owner
        RETURNING batch_id
    ),
    parked AS (
        UPDATE batch SET status = 'paused', pause_reason = :park_reason, pause_message = :error_message,
               resume_at = :resume_at
        WHERE id = (SELECT batch_id FROM moved) AND CAST(:park_reason AS text) IS NOT NULL
          AND status = 'in_progress'
        RETURNING id
    )
    SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM parked) AS parked,
           (SELECT count(*) FROM attempt_done) AS recorded
    """
)

_ABANDON = text(
    f"""
    WITH attempt_done AS ({_ATTEMPT_SET} RETURNING id)
    UPDATE request SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, enqueued_at = NULL,
           next_attempt_at = now()
    WHERE id = :request_id AND status = 'running' AND lease_owner = :owner
      AND EXISTS (SELECT 1 FROM attempt_done)
    """
)

# The throttle said wait longer than a worker holds a slot: no call was made, so the attempt row goes and
# the request is as it was before the lease, due again when the wait is over (and its batch parked when the
# wait is the daily quota).
_UNLEASE = text(
    """
    WITH unfired AS (
        DELETE FROM attempt WHERE id = :attempt_id AND outcome = 'in_flight' RETURNING request_id
    ), released AS (
        UPDATE request SET status = 'pending', attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL,
               enqueued_at = NULL, next_attempt_at = now() + make_interval(secs => :delay_seconds)
        WHERE id = :request_id AND status = 'running' AND lease_owner = :owner AND id IN (SELECT request_id FROM unfired)
        RETURNING batch_id
    )
    UPDATE batch SET status = 'paused', pause_reason = :park_reason, pause_message = :park_message,
           resume_at = now() + make_interval(secs => :delay_seconds)
    WHERE id = (SELECT batch_id FROM released) AND CAST(:park_reason AS text) IS NOT NULL AND status = 'in_progress'
    """
)

# A call the batch's options forbid (a paid model in a free-only batch) is never made: the request fails.
_REFUSE = text(
    """
    WITH unfired AS (
        DELETE FROM attempt WHERE id = :attempt_id AND outcome = 'in_flight' RETURNING request_id
    )
    UPDATE request SET status = 'failed', attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL,
           enqueued_at = NULL, finished_at = now(), last_error = :message
    WHERE id = :request_id AND status = 'running' AND lease_owner = :owner AND id IN (SELECT request_id FROM unfired)
    """
)

# A request identical to one already answered takes a copy of that answer instead of a call; its attempt
# row says so (outcome `reused`, `reused_from`) and costs nothing.
_REUSE = text(
    """
    WITH source AS (
        SELECT res.request_id, res.body, res.content, res.finish_reason, res.model
        FROM request q JOIN result res ON res.request_id = q.id
        WHERE q.fingerprint = :fingerprint AND q.id <> :request_id
        LIMIT 1
    ), attempt_done AS (
        UPDATE attempt a SET outcome = 'reused', finished_at = now(), latency_ms = 0, cost = 0,
               reused_from = source.request_id, model = source.model
        FROM source WHERE a.id = :attempt_id
        RETURNING a.id
    ), completed AS (
        UPDATE request SET status = 'completed', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
               enqueued_at = NULL, last_error = NULL
        WHERE id = :request_id AND status = 'running' AND lease_owner = :owner
          AND EXISTS (SELECT 1 FROM attempt_done)
        RETURNING id
    )
    INSERT INTO result (request_id, attempt_id, body, content, finish_reason, model)
    SELECT completed.id, :attempt_id, source.body, source.content, source.finish_reason, source.model
    FROM completed, source
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
    """
)

# An identical request with a lower id being called right now: wait for its answer rather than pay twice.
_TWIN_IN_FLIGHT = text(
    "SELECT EXISTS (SELECT 1 FROM request WHERE fingerprint = :fingerprint AND id < :request_id"
    " AND status = 'running')"
)

_NOTHING_LEFT = text(
    """
    SELECT NOT EXISTS (
        SELECT 1 FROM request r JOIN batch b ON b.id = r.batch_id
        WHERE b.status IN ('in_progress', 'cancelling') AND r.status IN ('pending', 'running')
    )
    """
)


def _attempt_params(
    attempt_id: int,
    started_at: datetime | None,
    outcome: Outcome,
    latency_ms: int | None,
    http_status: int | None,
    model: str | None = None,
    provider: str | None = None,
    generation_id: str | None = None,
    usage: Usage | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    usage = usage or Usage()
    return {
        "attempt_id": attempt_id,
        "started_at": started_at,
        "outcome": outcome.value,
        "latency_ms": latency_ms,
        "http_status": http_status,
        "model": model,
        "provider": provider,
        "generation_id": generation_id,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cached_tokens": usage.cached_tokens,
        "cost": usage.cost,
        "cost_estimated": usage.cost_estimated,
        "error_code": error_code,
        "error_message": error_message,
    }


async def take_lease(
    engine: AsyncEngine, request_id: int, attempts: int, owner: str, lease_seconds: float
) -> Lease | None:
    """Lease the request for this job's attempt; None when it is not due, finished, taken or its batch stopped."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                _TAKE_LEASE,
                {
                    "request_id": request_id,
                    "attempts": attempts,
                    "owner": owner,
                    "lease_seconds": lease_seconds,
                },
            )
        ).one_or_none()
        await conn.commit()
    if row is None:
        return None
    return Lease(
        request_id=row.id,
        batch_id=row.batch_id,
        attempt_id=row.attempt_id,
        number=row.attempts,
        failures=row.failures,
        chain_pos=row.chain_pos,
        chain=list(row.chain),
        models_sent=list(row.models_sent),
        max_attempts=row.max_attempts,
        free_only=row.free_only,
        fingerprint=row.fingerprint,
        body=row.body,
    )


async def renew(engine: AsyncEngine, lease: Lease, owner: str, lease_seconds: float) -> bool:
    """Extend the lease; False when it was lost."""
    async with engine.connect() as conn:
        result = await conn.execute(
            _RENEW, {"request_id": lease.request_id, "owner": owner, "lease_seconds": lease_seconds}
        )
        await conn.commit()
    return bool(result.rowcount)


async def complete(
    engine: AsyncEngine, lease: Lease, success: Success, started_at: datetime, latency_ms: int
) -> bool:
    """Record the attempt, the result and the completed request atomically; False if it was already answered."""
    params = _attempt_params(
        lease.attempt_id,
        started_at,
        Outcome.SUCCESS,
        latency_ms,
        success.status,
        success.model,
        success.provider,
        success.generation_id,
        success.usage,
    )
    body = success.raw.decode("utf-8")
    content = success.content
    # Postgres cannot store NUL in text or JSONB; a model that emits one still gets its answer stored.
    if "\\u0000" in body:
        body = _JSON_NUL.sub(r"\1\\ufffd", body)
    if content is not None and "\x00" in content:
        content = content.replace("\x00", "\ufffd")
    params.update(
        request_id=lease.request_id,
        batch_id=lease.batch_id,
        body=body,
        content=content,
        finish_reason=success.finish_reason,
    )
    async with engine.connect() as conn:
        stored = (await conn.execute(_COMPLETE, params)).one_or_none()
        await conn.commit()
    return stored is not None


async def fail(
    engine: AsyncEngine,
    lease: Lease,
    owner: str,
    failure: Failure,
    decision: Decision,
    started_at: datetime,
    latency_ms: int,
) -> bool:
    """Record a failed attempt and move the request (and, to park, its batch) on; True if this worker moved it."""
    params = _attempt_params(
        lease.attempt_id,
        started_at,
        failure.outcome,
        latency_ms,
        failure.status,
        failure.model,
        failure.provider,
        failure.generation_id,
        failure.usage,
        failure.code,
        failure.message,
    )
    resume_at: datetime | None = failure.resume_at
    params.update(
        request_id=lease.request_id,
        batch_id=lease.batch_id,
        owner=owner,
        status=decision.status.value,
        failures=decision.failures,
        chain_pos=decision.chain_pos,
        delay_seconds=decision.delay_seconds,
        park_reason=failure.park_reason.value if failure.park_reason else None,
        resume_at=resume_at,
    )
    async with engine.connect() as conn:
        row = (await conn.execute(_FAIL, params)).one()
        await conn.commit()
    return bool(row.moved)


async def abandon(engine: AsyncEngine, lease: Lease, owner: str, reason: str) -> None:
    """Give a request back unfinished (the worker is stopping), without spending one of its attempts."""
    params = _attempt_params(lease.attempt_id, None, Outcome.ABANDONED, None, None, error_message=reason)
    params.update(request_id=lease.request_id, owner=owner)
    async with engine.connect() as conn:
        await conn.execute(_ABANDON, params)
        await conn.commit()


async def unlease(
    engine: AsyncEngine,
    lease: Lease,
    owner: str,
    delay_seconds: float,
    park_reason: PauseReason | None = None,
    park_message: str | None = None,
) -> None:
    """Give the request back unsent, due after `delay_seconds`; with a reason, pause its batch until then."""
    async with engine.connect() as conn:
        await conn.execute(
            _UNLEASE,
            {
                "attempt_id": lease.attempt_id,
                "request_id": lease.request_id,
                "owner": owner,
                "delay_seconds": delay_seconds,
                "park_reason": park_reason.value if park_reason else None,
                "park_message": park_message,
            },
        )
        await conn.commit()


async def refuse(engine: AsyncEngine, lease: Lease, owner: str, message: str) -> None:
    """Fail the request without calling upstream."""
    async with engine.connect() as conn:
        await conn.execute(
            _REFUSE,
            {
                "attempt_id": lease.attempt_id,
                "request_id": lease.request_id,
                "owner": owner,
                "message": message,
            },
        )
        await conn.commit()


async def reuse(engine: AsyncEngine, lease: Lease, owner: str) -> bool:
    """Answer the request from an identical one's stored result; False when there is none."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                _REUSE,
                {
                    "fingerprint": lease.fingerprint,
                    "request_id": lease.request_id,
                    "attempt_id": lease.attempt_id,
                    "owner": owner,
                },
            )
        ).one_or_none()
        await conn.commit()
    return row is not None


async def twin_in_flight(engine: AsyncEngine, lease: Lease) -> bool:
    """True when an identical request with a lower id is being called now."""
    async with engine.connect() as conn:
        params = {"fingerprint": lease.fingerprint, "request_id": lease.request_id}
        return bool((await conn.execute(_TWIN_IN_FLIGHT, params)).scalar_one())


async def free_calls_today(engine: AsyncEngine) -> int:
    """Free-model calls made since 00:00 UTC, to rebuild the throttle's daily count after Redis lost it."""
    async with engine.connect() as conn:
        return await usage_queries.free_calls_today(conn)


async def nothing_left(engine: AsyncEngine) -> bool:
    """True when no request can run now: all finished, or parked by their batch's state."""
    async with engine.connect() as conn:
        return bool((await conn.execute(_NOTHING_LEFT)).scalar_one())
