"""The task's Postgres writes: take a lease, renew it, and record how the attempt ended, each one statement.

Each write is a single statement, so it is atomic on its own; the worker runs them on an AUTOCOMMIT engine to
spare the BEGIN and COMMIT round trips. Every statement that records a call acts only while its attempt row is
still `in_flight` (or `abandoned`, for an answer that arrived after the feeder gave the lease up): run again
after a connection dropped at its commit, it finds the row recorded and changes nothing, so a call's cost is
added to its batch once. Each statement updates the batch row at most once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.constants import MAX_MODELS_PER_CALL
from jobs.core.sql import sql
from jobs.core.states import Outcome, PauseReason
from worker.classify import Failure, Success, Usage
from worker.retry import Decision

__all__ = [
    "Lease",
    "abandon",
    "complete",
    "fail",
    "free_calls_since",
    "nothing_left",
    "refuse",
    "renew",
    "reuse",
    "take_lease",
    "twin_in_flight",
    "unlease",
]

# A \u0000 escape in JSON text, not preceded by an escaped backslash.
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


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
_TAKE_LEASE = sql(
    f"""
    WITH leased AS (
        UPDATE request r SET status = {{R.RUNNING}}, attempts = r.attempts + 1, lease_owner = :owner,
               lease_expires_at = now() + make_interval(secs => :lease_seconds), enqueued_at = NULL
        FROM batch b
        WHERE r.id = :request_id AND r.attempts = :attempts AND r.status = {{R.PENDING}}
          AND r.next_attempt_at <= now() AND b.id = r.batch_id AND b.status = {{B.IN_PROGRESS}}
          AND b.simulated = :simulated
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
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

_RENEW = sql(
    "UPDATE request SET lease_expires_at = now() + make_interval(secs => :lease_seconds)"
    " WHERE id = :request_id AND status = {R.RUNNING} AND lease_owner = :owner"
)

# Records the call on its attempt row, only while the row is open: `in_flight`, or `abandoned` by the feeder
# after a lease lapsed (the answer still counts). Returns what the call cost, for the batch's spend.
_ATTEMPT_DONE = """
    attempt_done AS (
        UPDATE attempt SET started_at = coalesce(:started_at, started_at), finished_at = now(),
               latency_ms = :latency_ms, http_status = :http_status, outcome = :outcome, model = :model,
               provider = :provider, generation_id = :generation_id, prompt_tokens = :prompt_tokens,
               completion_tokens = :completion_tokens, reasoning_tokens = :reasoning_tokens,
               cached_tokens = :cached_tokens, cost = :cost, cost_estimated = :cost_estimated,
               error_code = :error_code, error_message = :error_message
        WHERE id = :attempt_id AND outcome IN ({O.IN_FLIGHT}, {O.ABANDONED})
        RETURNING coalesce(cost, 0) AS cost
    )"""

# The one update of the batch row a recorded call makes, when it has something to say: a capped batch's spend
# grows by the call's cost (and the batch pauses, `budget`, once the spend reaches the cap, so no call starts
# after that: the overshoot is at most the calls already in flight); a call that parks pauses it. `s` gives the
# call's cost and whether it parks.
_BATCH_AFTER_CALL = """
    batch_done AS (
        UPDATE batch b SET
            spent = b.spent + CASE WHEN b.max_cost IS NOT NULL THEN s.cost ELSE 0 END,
            status = CASE WHEN b.status <> {B.IN_PROGRESS} THEN b.status
                          WHEN s.park OR b.spent + s.cost >= b.max_cost THEN {B.PAUSED}
                          ELSE b.status END,
            pause_reason = CASE WHEN b.status <> {B.IN_PROGRESS} THEN b.pause_reason
                                WHEN s.park THEN CAST(:park_reason AS text)
                                WHEN b.spent + s.cost >= b.max_cost THEN {P.BUDGET}
                                ELSE b.pause_reason END,
            pause_message = CASE WHEN b.status <> {B.IN_PROGRESS} THEN b.pause_message
                                 WHEN s.park THEN CAST(:error_message AS text)
                                 WHEN b.spent + s.cost >= b.max_cost
                                 THEN 'The batch has spent ' || (b.spent + s.cost)::text
                                      || ' USD, reaching its --max-cost of ' || b.max_cost::text
                                      || ' USD. Raise it with `orbatch resume ' || b.id || ' --max-cost USD`.'
                                 ELSE b.pause_message END,
            resume_at = CASE WHEN b.status <> {B.IN_PROGRESS} THEN b.resume_at
                             WHEN s.park THEN CAST(:resume_at AS timestamptz)
                             WHEN b.spent + s.cost >= b.max_cost THEN NULL
                             ELSE b.resume_at END
        FROM s
        WHERE b.id = :batch_id AND (s.park OR (b.max_cost IS NOT NULL AND s.cost > 0))
        RETURNING b.status, b.pause_reason
    )"""

# Completes the request whoever holds it now: a slow worker whose lease was taken over still has a good
# answer, and an answer paid for is kept even when the request was cancelled while its call ran. The result's
# primary key is the request, so a second answer is never stored.
_COMPLETE = sql(
    f"""
    WITH {_ATTEMPT_DONE},
    s AS (SELECT cost, false AS park FROM attempt_done),
    {_BATCH_AFTER_CALL},
    completed AS (
        UPDATE request SET status = {{R.COMPLETED}}, finished_at = now(), lease_owner = NULL,
               lease_expires_at = NULL, enqueued_at = NULL, last_error = NULL
        WHERE id = :request_id AND status IN ({{R.RUNNING}}, {{R.PENDING}}, {{R.CANCELLED}})
          AND EXISTS (SELECT 1 FROM attempt_done)
        RETURNING id
    )
    INSERT INTO result (request_id, attempt_id, body, content, finish_reason, model)
    SELECT completed.id, :attempt_id, CAST(:body AS jsonb), :content, :finish_reason, :model FROM completed
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# Only the lease holder moves the request on; a worker that lost its lease records its attempt only. A request
# of a cancelling batch that would go back to pending is cancelled instead, so the cancel ends.
_FAIL = sql(
    f"""
    WITH before AS (SELECT status FROM batch WHERE id = :batch_id),
    {_ATTEMPT_DONE},
    moved AS (
        UPDATE request r SET
               status = CASE WHEN :status = {{R.PENDING}} AND b.status = {{B.CANCELLING}} THEN {{R.CANCELLED}}
                             ELSE :status END,
               failures = :failures, chain_pos = :chain_pos,
               next_attempt_at = now() + make_interval(secs => :delay_seconds), last_error = :error_message,
               lease_owner = NULL, lease_expires_at = NULL, enqueued_at = NULL,
               finished_at = CASE WHEN :status <> {{R.PENDING}} OR b.status = {{B.CANCELLING}} THEN now() END
        FROM batch b
        WHERE r.id = :request_id AND r.status = {{R.RUNNING}} AND r.lease_owner = :owner AND b.id = r.batch_id
          AND EXISTS (SELECT 1 FROM attempt_done)
        RETURNING r.status
    ),
    s AS (
        SELECT coalesce((SELECT cost FROM attempt_done), 0) AS cost,
               (CAST(:park_reason AS text) IS NOT NULL AND EXISTS (SELECT 1 FROM moved)) AS park
    ),
    {_BATCH_AFTER_CALL}
    SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM attempt_done) AS recorded,
           (SELECT d.pause_reason FROM batch_done d, before
            WHERE d.status = {{B.PAUSED}} AND before.status = {{B.IN_PROGRESS}}) AS paused
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# The worker stops while its call runs: the attempt is `abandoned` and the request is given back unfinished,
# spending none of its attempts (or cancelled, when its batch is cancelling).
_ABANDON = sql(
    f"""
    WITH {_ATTEMPT_DONE}
    UPDATE request r SET
           status = CASE WHEN b.status = {{B.CANCELLING}} THEN {{R.CANCELLED}} ELSE {{R.PENDING}} END,
           finished_at = CASE WHEN b.status = {{B.CANCELLING}} THEN now() END,
           lease_owner = NULL, lease_expires_at = NULL, enqueued_at = NULL, next_attempt_at = now()
    FROM batch b
    WHERE r.id = :request_id AND r.status = {{R.RUNNING}} AND r.lease_owner = :owner AND b.id = r.batch_id
      AND EXISTS (SELECT 1 FROM attempt_done)
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# No call was made (the throttle, the outage breaker or a twin said wait; the worker is stopping): the attempt
# row goes and the request is as it was before the lease, due again after the wait, or cancelled when its batch
# is cancelling. With a reason, the batch is paused until then (the daily quota). Taking the attempt count back
# would give the next job the id of the one just run, whose arq keys may outlive it and which a feeder may be
# about to mark queued (stranding the request until the requeue sweep); `feeds` moves on so the id is new.
_UNLEASE = sql(
    """
    WITH unfired AS (
        DELETE FROM attempt WHERE id = :attempt_id AND outcome = {O.IN_FLIGHT} RETURNING request_id
    ), released AS (
        UPDATE request r SET
               status = CASE WHEN b.status = {B.CANCELLING} THEN {R.CANCELLED} ELSE {R.PENDING} END,
               finished_at = CASE WHEN b.status = {B.CANCELLING} THEN now() END,
               attempts = r.attempts - 1, feeds = r.feeds + 1, lease_owner = NULL, lease_expires_at = NULL,
               enqueued_at = NULL, next_attempt_at = now() + make_interval(secs => :delay_seconds)
        FROM batch b
        WHERE r.id = :request_id AND r.status = {R.RUNNING} AND r.lease_owner = :owner AND b.id = r.batch_id
          AND r.id IN (SELECT request_id FROM unfired)
        RETURNING r.batch_id
    ), parked AS (
        UPDATE batch SET status = {B.PAUSED}, pause_reason = :park_reason, pause_message = :park_message,
               resume_at = now() + make_interval(secs => :delay_seconds)
        WHERE id = (SELECT batch_id FROM released) AND CAST(:park_reason AS text) IS NOT NULL
          AND status = {B.IN_PROGRESS}
        RETURNING id
    )
    SELECT (SELECT count(*) FROM parked) AS parked
    """
)

# A call the batch's options forbid (a paid model in a free-only batch) is never made: the request fails.
_REFUSE = sql(
    """
    WITH unfired AS (
        DELETE FROM attempt WHERE id = :attempt_id AND outcome = {O.IN_FLIGHT} RETURNING request_id
    )
    UPDATE request SET status = {R.FAILED}, attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL,
           enqueued_at = NULL, finished_at = now(), last_error = :message
    WHERE id = :request_id AND status = {R.RUNNING} AND lease_owner = :owner
      AND id IN (SELECT request_id FROM unfired)
    """
)

# A request identical to one already answered takes a copy of that answer instead of a call; its attempt
# row says so (outcome `reused`, `reused_from`) and costs nothing.
_REUSE = sql(
    """
    WITH source AS (
        SELECT res.request_id, res.body, res.content, res.finish_reason, res.model
        FROM request q JOIN result res ON res.request_id = q.id
        WHERE q.fingerprint = :fingerprint AND q.id <> :request_id
        LIMIT 1
    ), attempt_done AS (
        UPDATE attempt a SET outcome = {O.REUSED}, finished_at = now(), latency_ms = 0, cost = 0,
               reused_from = source.request_id, model = source.model
        FROM source WHERE a.id = :attempt_id AND a.outcome = {O.IN_FLIGHT}
        RETURNING a.id
    ), completed AS (
        UPDATE request SET status = {R.COMPLETED}, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
               enqueued_at = NULL, last_error = NULL
        WHERE id = :request_id AND status = {R.RUNNING} AND lease_owner = :owner
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

# Of identical requests still to be answered, the one with the lowest id calls and the others wait for its
# answer, rather than pay twice. Checking only twins being called right now would let two twins whose leases
# were taken at the same moment both call: an unfinished twin with a lower id is waited for whether it is
# running or still pending (in a batch that runs: a paused or stopped twin does not hold others back).
_TWIN_IN_FLIGHT = sql(
    """
    SELECT EXISTS (
        SELECT 1 FROM request t JOIN batch b ON b.id = t.batch_id
        WHERE t.fingerprint = :fingerprint AND t.id < :request_id
          AND (t.status = {R.RUNNING} OR (t.status = {R.PENDING} AND b.status = {B.IN_PROGRESS}))
    )
    """
)

# Nothing can run now: every request of a running (or cancelling) batch is finished. Requests waiting for a
# retry, the outage breaker or a cool-down keep a burst worker running.
_NOTHING_LEFT = sql(
    """
    SELECT NOT EXISTS (
        SELECT 1 FROM request r JOIN batch b ON b.id = r.batch_id
        WHERE b.status IN ({B.IN_PROGRESS}, {B.CANCELLING}) AND r.status IN ({R.PENDING}, {R.RUNNING})
          AND b.simulated = :simulated
    )
    """
)

# Free calls made since a moment (the start of the free tier's day): what the daily quota has spent, to rebuild
# the throttle's count when Redis lost it. Reused answers made no call; a simulated batch's calls went to the
# simulator, not to the account (and the other way round).
_FREE_CALLS_SINCE = sql(
    """
    SELECT count(*) FROM attempt a JOIN batch b ON b.id = a.batch_id
    WHERE a.started_at >= :since AND a.models_sent[1] LIKE '%\\:free'
      AND a.outcome NOT IN ({O.IN_FLIGHT}, {O.REUSED}) AND b.simulated = :simulated
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
    engine: AsyncEngine, request_id: int, attempts: int, owner: str, lease_seconds: float, *, simulated: bool
) -> Lease | None:
    """Lease the request for this job's attempt; None when it is not due, finished, taken or its batch stopped,
    or when the batch is not for this worker's upstream: a simulated batch is never sent to OpenRouter (and
    paid for), nor a real one answered by the simulator's echoes."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                _TAKE_LEASE,
                {
                    "request_id": request_id,
                    "attempts": attempts,
                    "owner": owner,
                    "lease_seconds": lease_seconds,
                    "simulated": simulated,
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


def _storable(body: str, content: str | None) -> tuple[str, str | None]:
    """Postgres cannot store NUL in text or JSONB; a model that emits one still gets its answer stored."""
    if "\\u0000" in body:
        body = _JSON_NUL.sub(r"\1\\ufffd", body)
    if content is not None and "\x00" in content:
        content = content.replace("\x00", "\ufffd")
    return body, content


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
    body, content = _storable(success.raw.decode("utf-8"), success.content)
    params.update(
        request_id=lease.request_id,
        batch_id=lease.batch_id,
        body=body,
        content=content,
        finish_reason=success.finish_reason,
        park_reason=None,
        resume_at=None,
    )
    async with engine.connect() as conn:
        stored = (await conn.execute(_COMPLETE, params)).one_or_none()
        await conn.commit()
    return stored is not None


@dataclass(slots=True, frozen=True)
class FailRecord:
    """What recording a failed attempt did: moved the request on, and the pause it caused, if any."""

    moved: bool
    recorded: bool
    paused: str | None


async def fail(
    engine: AsyncEngine,
    lease: Lease,
    owner: str,
    failure: Failure,
    decision: Decision,
    started_at: datetime,
    latency_ms: int,
) -> FailRecord:
    """Record a failed attempt and move the request (and, to park or on its budget, its batch) on."""
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
    params.update(
        request_id=lease.request_id,
        batch_id=lease.batch_id,
        owner=owner,
        status=decision.status.value,
        failures=decision.failures,
        chain_pos=decision.chain_pos,
        delay_seconds=decision.delay_seconds,
        park_reason=failure.park_reason.value if failure.park_reason else None,
        resume_at=failure.resume_at,
    )
    async with engine.connect() as conn:
        row = (await conn.execute(_FAIL, params)).one()
        await conn.commit()
    return FailRecord(bool(row.moved), bool(row.recorded), row.paused)


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
) -> bool:
    """Give the request back unsent, due after `delay_seconds`; with a reason, pause its batch until then.

    True when this call paused the batch (so a pause is announced once, not once per request).
    """
    async with engine.connect() as conn:
        row = (
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
        ).one()
        await conn.commit()
    return bool(row.parked)


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
    """True when an identical request with a lower id is still to be answered: it calls, this one waits."""
    async with engine.connect() as conn:
        params = {"fingerprint": lease.fingerprint, "request_id": lease.request_id}
        return bool((await conn.execute(_TWIN_IN_FLIGHT, params)).scalar_one())


async def free_calls_since(engine: AsyncEngine, since: datetime, simulated: bool) -> int:
    """Free-model calls made since `since` (the free tier's day start), of simulated batches or of real ones."""
    async with engine.connect() as conn:
        params = {"since": since, "simulated": simulated}
        return int((await conn.execute(_FREE_CALLS_SINCE, params)).scalar_one())


async def nothing_left(engine: AsyncEngine, simulated: bool) -> bool:
    """True when no request of this kind of upstream can run now: all finished, or parked by their batch's
    state (a worker in front of a simulator has nothing to do with OpenRouter's batches, and the other way)."""
    async with engine.connect() as conn:
        return bool((await conn.execute(_NOTHING_LEFT, {"simulated": simulated})).scalar_one())
