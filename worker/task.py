"""The arq task: lease a request, call OpenRouter, record the attempt and, on success, the result."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from jobs.constants import QUOTA_HOLD_SECONDS, TWIN_WAIT_SECONDS
from jobs.db import connection_lost
from jobs.logs import get_logger
from jobs.states import Outcome, PauseReason, RequestStatus
from worker import records
from worker.classify import Failure, Success, classify
from worker.context import WorkerContext, context
from worker.openrouter import CallResult
from worker.retry import decide
from worker.structured import reply_problem, requested_schema
from worker.throttle import Denied, Permit

__all__ = ["run_request"]

log = get_logger(__name__)
T = TypeVar("T")

# A response in hand is worth waiting for: keep retrying its write through a database restart.
_PERSIST_DEADLINE_SECONDS = 120.0


async def _persist(what: str, write: Callable[[], Awaitable[T]]) -> T:
    """Run a database write, retrying through connection failures for a bounded time."""
    deadline = time.monotonic() + _PERSIST_DEADLINE_SECONDS
    delay = 0.2
    while True:
        try:
            return await write()
        except (DBAPIError, OSError) as exc:
            if not connection_lost(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("database write failed; retrying", what=what, error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class _Renewal:
    """Keeps a lease (and the throttle permit of its call, once it has one) alive while the task runs."""

    def __init__(self) -> None:
        self.permit: Permit | None = None


@contextlib.asynccontextmanager
async def _renewing(ctx: WorkerContext, lease: records.Lease) -> AsyncIterator[_Renewal]:
    """Renew every third of the lease, so only a dead worker's lease (and permits) expire."""
    interval = ctx.settings.lease_seconds / 3
    renewal = _Renewal()

    async def renew_forever() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if renewal.permit is not None:
                    await ctx.throttle.renew(renewal.permit)
                if not await records.renew(ctx.engine, lease, ctx.owner, ctx.settings.lease_seconds):
                    log.warning("lease lost; the answer will still be recorded", request_id=lease.request_id)
                    return
            except (DBAPIError, OSError, RedisError) as exc:
                log.warning("lease renewal failed", request_id=lease.request_id, error=str(exc))

    renewer = asyncio.create_task(renew_forever())
    try:
        yield renewal
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer


async def _record_failure(
    ctx: WorkerContext,
    lease: records.Lease,
    free: bool,
    call: CallResult,
    failure: Failure,
    started_at: datetime,
) -> str:
    settings = ctx.settings
    decision = decide(
        failure,
        failures=lease.failures,
        chain=lease.chain,
        chain_pos=lease.chain_pos,
        max_attempts=lease.max_attempts,
        base=settings.retry_base_seconds,
        cap=settings.retry_max_seconds,
    )
    # The throttle learns first, so other workers hold back while this one writes to Postgres.
    if failure.cooldown_until is not None:
        held = await ctx.throttle.cool_down(free, int(failure.cooldown_until.timestamp() * 1000))
        log.warning("OpenRouter rate limit: every worker waits", seconds=held, message=failure.message)
    await _persist(
        "failure",
        lambda: records.fail(ctx.engine, lease, ctx.owner, failure, decision, started_at, call.latency_ms),
    )
    log.info(
        "attempt failed",
        request_id=lease.request_id,
        batch_id=lease.batch_id,
        attempt=lease.number,
        outcome=failure.outcome.value,
        code=failure.code,
        status=failure.status,
        message=failure.message,
        next=decision.status.value,
        retry_in=round(decision.delay_seconds, 2) if decision.status is RequestStatus.PENDING else None,
    )
    if failure.outcome is Outcome.PARK:
        log.error(
            "batch paused", batch_id=lease.batch_id, reason=failure.park_reason, message=failure.message
        )
    return failure.outcome.value


async def _throttled(ctx: WorkerContext, lease: records.Lease, denied: Denied) -> str:
    """Give the request back unsent: the throttle's wait is longer than a worker holds a slot."""
    quota_hold = denied.kind == "cooldown" and lease.models_sent[0].endswith(":free")
    if denied.kind == "daily" or (quota_hold and denied.wait_seconds >= QUOTA_HOLD_SECONDS):
        limit = ctx.throttle.limits.free_per_day
        message = (
            f"The daily quota of {limit} free-model requests is spent; the batch resumes at 00:00 UTC."
            if denied.kind == "daily"
            else "OpenRouter's free-model quota is spent; the batch resumes when OpenRouter said it resets."
        )
        await _persist(
            "park",
            lambda: records.unlease(
                ctx.engine, lease, ctx.owner, denied.wait_seconds, PauseReason.QUOTA, message
            ),
        )
        log.warning("batch paused", batch_id=lease.batch_id, reason="quota", message=message)
    else:
        await _persist("unlease", lambda: records.unlease(ctx.engine, lease, ctx.owner, denied.wait_seconds))
    return f"throttled-{denied.kind}"


async def run_request(arq_ctx: dict[str, Any], request_id: int, attempts: int) -> str:
    """Run one attempt of one request; returns what happened, for arq's log."""
    ctx = context(arq_ctx)
    lease = await _persist(
        "lease",
        lambda: records.take_lease(ctx.engine, request_id, attempts, ctx.owner, ctx.settings.lease_seconds),
    )
    if lease is None:
        return "skipped"
    try:
        return await _run_leased(ctx, lease)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if connection_lost(exc):
            raise  # the lease expires and the request runs again once the database is back
        # A bug must not loop for ever: the attempt fails like any other and spends one of the request's tries.
        log.exception("internal error running a request", request_id=lease.request_id)
        failure = Failure(
            Outcome.RETRY, "internal_error", f"orbatch internal error: {type(exc).__name__}: {exc}"
        )
        await _record_failure(ctx, lease, False, CallResult(latency_ms=0), failure, datetime.now(UTC))
        return "internal-error"


def _check_structured(body: dict[str, Any], success: Success) -> Success | Failure:
    """A reply to a request that asked for a JSON schema counts only if it follows it; else it is retried."""
    schema = requested_schema(body)
    if schema is None:
        return success
    problem = reply_problem(schema, success.content)
    if problem is None:
        return success
    return Failure(
        Outcome.RETRY,
        "invalid_output",
        problem,
        success.status,
        model=success.model,
        provider=success.provider,
        generation_id=success.generation_id,
        usage=success.usage,
    )


async def _run_leased(ctx: WorkerContext, lease: records.Lease) -> str:
    """Throttle, call and record one leased request."""
    paid = [m for m in lease.models_sent if not m.endswith(":free")]
    if lease.free_only and paid:
        message = f"the batch is --free-only and this request would send the paid model {paid[0]!r}; not sent"
        await _persist("refuse", lambda: records.refuse(ctx.engine, lease, ctx.owner, message))
        return "refused"
    if lease.fingerprint is not None:
        if await _persist("reuse", lambda: records.reuse(ctx.engine, lease, ctx.owner)):
            return "reused"
        if await _persist("twin", lambda: records.twin_in_flight(ctx.engine, lease)):
            await _persist(
                "unlease", lambda: records.unlease(ctx.engine, lease, ctx.owner, TWIN_WAIT_SECONDS)
            )
            return "waiting-for-twin"
    # A request counts against the free limits when the first model it will try is a free variant.
    free = lease.models_sent[0].endswith(":free")
    sent = False
    try:
        async with _renewing(ctx, lease) as renewal:
            permit = await ctx.throttle.acquire(free)
            if isinstance(permit, Denied):
                return await _throttled(ctx, lease, permit)
            renewal.permit = permit
            started_at = datetime.now(UTC)
            sent = True
            try:
                call = await ctx.client.chat(lease.body, lease.models_sent)
            finally:
                await asyncio.shield(ctx.throttle.release(permit))
    except asyncio.CancelledError:
        if sent:
            await asyncio.shield(
                records.abandon(ctx.engine, lease, ctx.owner, "the worker stopped during the call")
            )
        else:
            await asyncio.shield(records.unlease(ctx.engine, lease, ctx.owner, 0.0))
        raise
    outcome = classify(call)
    if outcome.usage is not None:
        await ctx.prices.fill(outcome.usage, outcome.model)
    if isinstance(outcome, Success):
        outcome = _check_structured(lease.body, outcome)
    if isinstance(outcome, Success):
        stored = await _persist(
            "result", lambda: records.complete(ctx.engine, lease, outcome, started_at, call.latency_ms)
        )
        return "completed" if stored else "completed-elsewhere"
    return await _record_failure(ctx, lease, free, call, outcome, started_at)
