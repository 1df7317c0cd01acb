"""The task's Postgres writes, bound to its lease: `take_lease` gives an `Attempt` whose methods renew the lease
and record how the attempt ended, each one statement of jobs/scheduling/lifecycle.py."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.constants import PERSIST_DEADLINE_SECONDS
from jobs.core.db import conflicted, connection_lost
from jobs.core.logs import get_logger
from jobs.core.sql import sql
from jobs.core.states import Outcome, PauseReason
from jobs.scheduling import lifecycle
from jobs.scheduling.lifecycle import CallRecord, FailRecord, Lease
from worker.classify import ERROR_MESSAGE_MAX_CHARS, Failure, Success, Usage
from worker.retry import Decision

__all__ = [
    "Attempt",
    "FailRecord",
    "Lease",
    "call_record",
    "free_calls_since",
    "nothing_left",
    "persist",
    "storable",
    "take_lease",
]

# The worker runs them on an AUTOCOMMIT engine to spare the BEGIN and COMMIT round trips; jobs/scheduling/
# lifecycle.py says why each statement is safe to run again after a connection dropped at its commit.

log = get_logger(__name__)
T = TypeVar("T")

# A \u0000 escape in JSON text, not preceded by an escaped backslash.
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


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
# retry, the outage breaker, a cool-down or a remote batch of the batch lane keep a burst worker running (its
# driver polls the remote batch and stores its lines).
_NOTHING_LEFT = sql(
    """
    SELECT NOT EXISTS (
        SELECT 1 FROM request r JOIN batch b ON b.id = r.batch_id
        WHERE b.status IN ({B.IN_PROGRESS}, {B.CANCELLING})
          AND r.status IN ({R.PENDING}, {R.RUNNING}, {R.REMOTE}) AND b.simulated = :simulated
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


def call_record(
    answer: Success | Failure, started_at: datetime | None, latency_ms: int | None, part: str | None = None
) -> CallRecord:
    """What an attempt row keeps of an answer: a call's, or a remote batch's line's; of a split request's call,
    the part it asked for (and a part's answer, which the next parts build on, as its `reply`)."""
    usage = answer.usage or Usage()
    failure = answer if isinstance(answer, Failure) else None
    return CallRecord(
        outcome=Outcome.SUCCESS if failure is None else failure.outcome,
        started_at=started_at,
        latency_ms=latency_ms,
        http_status=answer.status,
        model=answer.model,
        provider=answer.provider,
        generation_id=answer.generation_id,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cached_tokens=usage.cached_tokens,
        cost=usage.cost,
        cost_estimated=usage.cost_estimated,
        error_code=failure.code if failure else None,
        error_message=failure.message[:ERROR_MESSAGE_MAX_CHARS] if failure else None,
        reply=storable("", failure.reply)[1] if failure else None,
        part=part,
    )


async def persist(what: str, write: Callable[[], Awaitable[T]]) -> T:
    """Run a database write (one transaction), retrying through connection failures and through a deadlock or a
    serialization conflict (the transaction was rolled back, nothing was written) for a bounded time."""
    deadline = time.monotonic() + PERSIST_DEADLINE_SECONDS
    delay = 0.2
    while True:
        try:
            return await write()
        except (DBAPIError, OSError) as exc:
            if not (connection_lost(exc) or conflicted(exc)) or time.monotonic() + delay > deadline:
                raise
            log.warning("database write failed; retrying", what=what, error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def storable(body: str, content: str | None) -> tuple[str, str | None]:
    """Postgres cannot store NUL in text or JSONB; a model that emits one still gets its answer stored."""
    if "\\u0000" in body:
        body = _JSON_NUL.sub(r"\1\\ufffd", body)
    if content is not None and "\x00" in content:
        content = content.replace("\x00", "\ufffd")
    return body, content


@dataclass(slots=True, frozen=True)
class Attempt:
    """A lease this worker holds, bound to the engine its writes go through and the owner name that holds it:
    every write of the attempt is one method call, whatever it records."""

    engine: AsyncEngine
    owner: str
    lease_seconds: float
    lease: Lease

    async def renew(self) -> bool:
        """Extend the lease; False when it was lost."""
        async with self.engine.connect() as conn:
            renewed = await lifecycle.renew_lease(conn, self.lease.request_id, self.owner, self.lease_seconds)
            await conn.commit()
        return renewed

    async def complete(
        self, success: Success, started_at: datetime, latency_ms: int, part: str | None = None
    ) -> bool:
        """Record the attempt, the result and the completed request atomically; False if it was already
        answered."""
        call = call_record(success, started_at, latency_ms, part)
        body, content = storable(success.raw.decode("utf-8"), success.content)
        async with self.engine.connect() as conn:
            stored = await lifecycle.record_answer(
                conn, self.lease, call, body, content, success.finish_reason
            )
            await conn.commit()
        return stored

    async def fail(
        self,
        failure: Failure,
        decision: Decision,
        started_at: datetime,
        latency_ms: int,
        part: str | None = None,
    ) -> FailRecord:
        """Record a failed attempt and move the request (and, to park or on its budget, its batch) on."""
        call = call_record(failure, started_at, latency_ms, part)
        async with self.engine.connect() as conn:
            record = await lifecycle.record_failure(
                conn,
                self.lease,
                self.owner,
                call,
                status=decision.status,
                failures=decision.failures,
                chain_pos=decision.chain_pos,
                delay_seconds=decision.delay_seconds,
                park_reason=failure.park_reason,
                resume_at=failure.resume_at,
            )
            await conn.commit()
        return record

    async def answer_part(self, success: Success, part: str, started_at: datetime, latency_ms: int) -> bool:
        """Record a part's answer on its attempt and give the request back for its next part; False when the
        lease was lost (the answer is kept all the same)."""
        record = call_record(success, started_at, latency_ms, part)
        answer = storable("", success.content or "")[1] or ""
        call = dataclasses.replace(record, reply=answer)
        async with self.engine.connect() as conn:
            _, moved = await lifecycle.record_part(conn, self.lease, self.owner, call)
            await conn.commit()
        return moved

    async def part_answers(self) -> dict[str, str]:
        """The parts of this split request answered so far, by name."""
        async with self.engine.connect() as conn:
            return await lifecycle.part_answers(conn, self.lease.request_id)

    async def abandon(self, reason: str) -> None:
        """Give a request back unfinished (the worker is stopping), without spending one of its attempts."""
        async with self.engine.connect() as conn:
            await lifecycle.abandon(conn, self.lease, self.owner, reason)
            await conn.commit()

    async def give_back(
        self, delay_seconds: float, park_reason: PauseReason | None = None, park_message: str | None = None
    ) -> bool:
        """Give the request back unsent, due after `delay_seconds`; with a reason, pause its batch until then.

        True when this call paused the batch (so a pause is announced once, not once per request).
        """
        async with self.engine.connect() as conn:
            paused = await lifecycle.give_back(
                conn, self.lease, self.owner, delay_seconds, park_reason, park_message
            )
            await conn.commit()
        return paused

    async def refuse(self, message: str) -> None:
        """Fail the request without calling upstream."""
        async with self.engine.connect() as conn:
            await lifecycle.refuse(conn, self.lease, self.owner, message)
            await conn.commit()

    async def reuse(self) -> bool:
        """Answer the request from an identical one's stored result; False when there is none."""
        async with self.engine.connect() as conn:
            reused = await lifecycle.reuse(conn, self.lease, self.owner)
            await conn.commit()
        return reused

    async def last_invalid_reply(self) -> tuple[str, str] | None:
        """The reply and validation error of this request's latest `invalid_output` attempt, if any."""
        async with self.engine.connect() as conn:
            return await lifecycle.last_invalid_reply(conn, self.lease.request_id, self.lease.number)

    async def twin_in_flight(self) -> bool:
        """True when an identical request with a lower id is still to be answered: it calls, this one waits."""
        async with self.engine.connect() as conn:
            params = {"fingerprint": self.lease.fingerprint, "request_id": self.lease.request_id}
            return bool((await conn.execute(_TWIN_IN_FLIGHT, params)).scalar_one())


async def take_lease(
    engine: AsyncEngine,
    request_id: int,
    attempts: int,
    owner: str,
    lease_seconds: float,
    *,
    simulated: bool,
    upstream: str | None = None,
) -> Attempt | None:
    """Lease the request for this job's attempt; None when it is not due, finished, taken or its batch stopped,
    or when the batch is not for this worker's upstream: a simulated batch is never sent to OpenRouter (and
    paid for), nor a real one answered by the simulator's echoes."""
    async with engine.connect() as conn:
        lease = await lifecycle.take_lease(
            conn, request_id, attempts, owner, lease_seconds, simulated=simulated, upstream=upstream
        )
        await conn.commit()
    return None if lease is None else Attempt(engine, owner, lease_seconds, lease)


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
