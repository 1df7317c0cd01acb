"""The arq task: lease a request, call OpenRouter, record the attempt and, on success, the result."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from jobs.core.constants import REDIS_SPARE_SECONDS
from jobs.core.db import connection_lost
from jobs.core.logs import get_logger, redact
from jobs.core.states import Outcome, PauseReason, RequestStatus
from jobs.formats.input_lines import EMBEDDINGS_URL, endpoint_of
from jobs.formats.long_text import Part, long_field, lookup, next_part, with_field
from jobs.formats.prompt_template import Template
from jobs.formats.structured import correction_turn, requested_schema, routed_for_schema
from jobs.observation.eta import format_duration
from worker import records
from worker.classify import Failure, Success, Usage, classify
from worker.context import WorkerContext, context
from worker.ends import TaskEnd, TaskResult, throttled
from worker.openrouter import CallResult
from worker.replycheck import checked_answer
from worker.retry import decide
from worker.throttle import Denied, DeniedKind, Permit, Verdict

__all__ = ["run_request"]

# A hold on free requests longer than this is the daily quota, not the per-minute limit: the batch is parked
# (reason `quota`) so that `worker --burst` can exit and `status` says why.
QUOTA_HOLD_SECONDS = 300.0
# With --dedupe, a request whose identical twin is being called waits this long before looking again.
TWIN_WAIT_SECONDS = 2.0
# A task cancelled by a second Ctrl-C records its stop within this; past it the lease expires instead.
STOPPED_WRITE_SECONDS = 5.0

log = get_logger(__name__)
T = TypeVar("T")


# Database writes retried through connection failures for a bounded time.
_persist = records.persist


@dataclass(slots=True)
class _Call:
    """What the task knows of its upstream call, kept so that whatever fails afterwards, its cost is recorded."""

    permit: Permit | None = None
    released: bool = False
    started_at: datetime | None = None
    result: CallResult | None = None
    usage: Usage | None = None
    status: int | None = None
    model: str | None = None
    provider: str | None = None
    generation_id: str | None = None

    @property
    def sent(self) -> bool:
        return self.started_at is not None

    def answered(self, outcome: Success | Failure) -> None:
        self.usage, self.status, self.model = outcome.usage, outcome.status, outcome.model
        self.provider, self.generation_id = outcome.provider, outcome.generation_id


async def _spare(what: str, request_id: int, step: Awaitable[T], default: T) -> T:
    """A Redis step the request's record can do without, bounded in time: a lost Redis costs seconds, not a
    paid answer (permits and cool-downs lapse by themselves; Postgres keeps the truth)."""
    try:
        async with asyncio.timeout(REDIS_SPARE_SECONDS):
            return await step
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning(
            "Redis did not answer; going on without it", what=what, request_id=request_id, error=str(exc)
        )
        return default


@contextlib.asynccontextmanager
async def _renewing(ctx: WorkerContext, attempt: records.Attempt, call: _Call) -> AsyncIterator[None]:
    """Renew every third of the lease (and the call's throttle permit), so only a dead worker's leases expire."""
    interval = attempt.lease_seconds / 3
    request_id = attempt.lease.request_id

    async def renew_forever() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if call.permit is not None and not call.released:
                    await ctx.throttle.renew(call.permit)
                if not await attempt.renew():
                    log.warning("lease lost; the answer will still be recorded", request_id=request_id)
                    return
            except (DBAPIError, OSError, RedisError) as exc:
                log.warning("lease renewal failed", request_id=request_id, error=str(exc))

    renewer = asyncio.create_task(renew_forever())
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer


async def _record_failure(
    ctx: WorkerContext,
    attempt: records.Attempt,
    free: bool,
    latency_ms: int,
    failure: Failure,
    started_at: datetime,
    part: str | None = None,
) -> TaskResult:
    settings = ctx.settings
    lease = attempt.lease
    decision = decide(
        failure,
        failures=lease.failures,
        chain=lease.chain,
        chain_pos=lease.chain_pos,
        max_attempts=lease.max_attempts,
        base=settings.retry_base_seconds,
        cap=settings.retry_max_seconds,
        window=lease.span or (1 if endpoint_of(lease.body) == EMBEDDINGS_URL else None),
    )
    # The throttle learns first, so other workers hold back while this one writes to Postgres.
    if failure.cooldown_until is not None:
        until_ms = int(failure.cooldown_until.timestamp() * 1000)
        held = await _spare("cool-down", lease.request_id, ctx.throttle.cool_down(free, until_ms), 0.0)
        log.warning("OpenRouter rate limit: every worker waits", seconds=held, message=failure.message)
    record = await _persist("failure", lambda: attempt.fail(failure, decision, started_at, latency_ms, part))
    log.debug(
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
    if record.paused is not None:
        log.warning("batch paused", batch_id=lease.batch_id, reason=record.paused, message=failure.message)
    if record.moved and decision.status is RequestStatus.FAILED:
        ctx.meter.finished(RequestStatus.FAILED)
    return failure.outcome


async def _throttled(ctx: WorkerContext, attempt: records.Attempt, denied: Denied) -> TaskResult:
    """Give the request back unsent: the wait is longer than a worker holds a slot, or the worker is stopping."""
    lease = attempt.lease
    if denied.kind in (DeniedKind.STOPPING, DeniedKind.OUTAGE, DeniedKind.UNREACHABLE):
        # An outage's requests are due at once; the feeder holds them back while the breaker is open.
        await _persist("unlease", lambda: attempt.give_back(0.0))
        return {DeniedKind.STOPPING: TaskEnd.STOPPING, DeniedKind.OUTAGE: TaskEnd.WAITING_OUTAGE}.get(
            denied.kind, TaskEnd.REDIS_UNREACHABLE
        )
    quota_hold = denied.kind is DeniedKind.COOLDOWN and lease.models_sent[0].endswith(":free")
    if denied.kind is DeniedKind.DAILY or (quota_hold and denied.wait_seconds >= QUOTA_HOLD_SECONDS):
        limits = ctx.throttle.limits
        if denied.kind is not DeniedKind.DAILY:
            message = (
                "OpenRouter's free-model quota is spent; the batch resumes when OpenRouter said it resets."
            )
        elif ctx.simulated:
            # A simulator's day lasts minutes at its default speed: said so, not as a date.
            message = (
                f"The simulator's daily quota of {limits.free_per_day} free requests is spent (its simulated day "
                f"lasts {format_duration(limits.day_seconds)}); the batch resumes when its next day begins."
            )
        else:
            message = (
                f"The daily quota of {limits.free_per_day} free-model requests is spent; the batch resumes when "
                "the free tier's day ends (00:00 UTC)."
            )
        paused = await _persist(
            "park", lambda: attempt.give_back(denied.wait_seconds, PauseReason.QUOTA, message)
        )
        if paused:
            log.warning("batch paused", batch_id=lease.batch_id, reason=PauseReason.QUOTA, message=message)
    else:
        await _persist("unlease", lambda: attempt.give_back(denied.wait_seconds))
    return throttled(denied.kind)


async def run_request(arq_ctx: dict[str, Any], request_id: int, attempts: int) -> str:
    """Run one attempt of one request; returns what happened, for arq's log."""
    ctx = context(arq_ctx)
    with ctx.meter.task():
        result = await _attempt(ctx, request_id, attempts)
    ctx.meter.ended(result)
    return result.value


def _calling(ctx: WorkerContext) -> None:
    """This task has sent a call: a graceful stop waits for it until its answer is recorded."""
    task = asyncio.current_task()
    if task is not None:
        ctx.calling.add(task)
        task.add_done_callback(ctx.calling.discard)


async def _attempt(ctx: WorkerContext, request_id: int, attempts: int) -> TaskResult:
    if ctx.stopping.is_set():
        return TaskEnd.STOPPING
    attempt = await _persist(
        "lease",
        lambda: records.take_lease(
            ctx.engine,
            request_id,
            attempts,
            ctx.owner,
            ctx.settings.lease_seconds,
            simulated=ctx.simulated,
            # The cached model list of this worker's upstream, whose context lengths skip models that cannot
            # hold the request.
            upstream=ctx.settings.openrouter_base_url.rstrip("/"),
        ),
    )
    if attempt is None:
        return TaskEnd.SKIPPED
    lease = attempt.lease
    call = _Call()
    try:
        outcome = await _run_leased(ctx, attempt, call)
        ctx.report.task(lease.batch_id, outcome)
        return outcome
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if connection_lost(exc):
            raise  # the lease expires and the request runs again once the database is back
        # A bug must not loop for ever: the attempt fails like any other and spends one of the request's tries,
        # and what the call cost, if it was answered, is recorded with it.
        log.exception("internal error running a request", request_id=lease.request_id)
        failure = Failure(
            Outcome.RETRY,
            "internal_error",
            redact(f"orbatch internal error: {type(exc).__name__}: {exc}")[:2000],
            call.status,
            model=call.model,
            provider=call.provider,
            generation_id=call.generation_id,
            usage=call.usage,
        )
        latency = call.result.latency_ms if call.result is not None else 0
        await _record_failure(ctx, attempt, False, latency, failure, call.started_at or datetime.now(UTC))
        ctx.report.task(lease.batch_id, TaskEnd.INTERNAL_ERROR)
        return TaskEnd.INTERNAL_ERROR


async def _outgoing(attempt: records.Attempt) -> dict[str, Any]:
    """The body this attempt sends: the stored one, routed to providers that honour its schema, and after a
    reply that failed the schema (unless the batch turned `feedback` off) a turn saying what was wrong.

    Built at call time, so the stored body (its fingerprint, its export) stays the line's own."""
    lease = attempt.lease
    if requested_schema(lease.body) is None:
        return lease.body
    body = routed_for_schema(lease.body, heal=bool(lease.options.get("heal", False)))
    if lease.number > 1 and lease.options.get("feedback", True):
        last = await _persist("last invalid reply", attempt.last_invalid_reply)
        if last is not None:
            body = correction_turn(body, *last)
    return body


async def _part(attempt: records.Attempt) -> tuple[Part, dict[str, Any]]:
    """The next part of a record summarised in parts and the body that asks for it: the stored body with its
    user message the template filled with the part's text in place of the long field. The chunks are cut again
    from the record (they never change); the parts answered so far are read from the request's attempts."""
    lease = attempt.lease
    if lease.split_tokens is None or lease.record is None or lease.template is None:
        raise ValueError("not a request split in parts")
    kept = lease.template
    template = Template.parse(str(kept["template"]), kept.get("system"), kept.get("json_schema"))
    path = long_field(template, lease.record, lease.options.get("long_field"))
    if path is None:
        raise ValueError("the record has no string field to split")
    answers = await _persist("part answers", attempt.part_answers)
    part = next_part(str(lookup(lease.record, path)), lease.split_tokens, answers)
    messages = list(lease.body["messages"])
    messages[-1] = {**messages[-1], "content": template.render(with_field(lease.record, path, part.text))}
    body = {**lease.body, "messages": messages}
    if requested_schema(body) is not None:
        body = routed_for_schema(body, heal=bool(lease.options.get("heal", False)))
    return part, body


async def _release(
    ctx: WorkerContext, call: _Call, lease: records.Lease, verdict: Verdict, reason: str = ""
) -> str:
    """Hand the permit back, telling the breaker what the call showed; 'open' when the breaker is open after it.

    Never raises and never waits long: whatever Redis does, the call's answer is recorded next.
    """
    if call.permit is None or call.released:
        return "ok"
    call.released = True
    model = lease.models_sent[0] if lease.models_sent else ""
    step = ctx.throttle.release(call.permit, verdict, lease.request_id, model, reason)
    return await _spare("release", lease.request_id, step, "ok")


def _outage(failure: Failure) -> Failure:
    """A failure of OpenRouter as a whole: no attempt of the request is spent; it runs once the upstream is back."""
    failure.outcome = Outcome.OUTAGE
    failure.spends_attempt = False
    failure.retry_after = 0.0
    return failure


async def _run_leased(ctx: WorkerContext, attempt: records.Attempt, call: _Call) -> TaskResult:
    """Throttle, call and record one leased request."""
    lease = attempt.lease
    paid = [m for m in lease.models_sent if not m.endswith(":free")]
    if lease.free_only and paid:
        message = f"the batch is --free-only and this request would send the paid model {paid[0]!r}; not sent"
        await _persist("refuse", lambda: attempt.refuse(message))
        ctx.meter.finished(RequestStatus.FAILED)
        return TaskEnd.REFUSED
    if lease.fingerprint is not None:
        if await _persist("reuse", attempt.reuse):
            ctx.meter.finished(RequestStatus.COMPLETED)
            return TaskEnd.REUSED
        if await _persist("twin", attempt.twin_in_flight):
            await _persist("unlease", lambda: attempt.give_back(TWIN_WAIT_SECONDS))
            return TaskEnd.WAITING_FOR_TWIN
    # A request counts against the free limits when the first model it will try is a free variant.
    free = lease.models_sent[0].endswith(":free")
    part: Part | None = None
    if lease.split_tokens is not None:
        # One call of a record summarised in parts: the next part not yet answered (its correction turns are
        # left out: an earlier invalid reply may be another part's).
        part, body = await _part(attempt)
    else:
        body = await _outgoing(attempt)
    try:
        async with _renewing(ctx, attempt, call):
            asked = time.monotonic()
            try:
                # A slot more than a moment away is held for the request, which waits for it in Postgres:
                # the worker's slot goes to a call that can go now.
                # (A stop does not wait on it: the graceful stop cancels a task that sent nothing after a moment.)
                permit = await ctx.throttle.acquire(free, ctx.stopping, lease.request_id)
            except (RedisError, OSError) as exc:
                # Nothing was sent: the request goes back as it was, to run once Redis answers again.
                log.warning(
                    "throttle unreachable; request given back", request_id=lease.request_id, error=str(exc)
                )
                permit = Denied(DeniedKind.UNREACHABLE, 0.0)
            if isinstance(permit, Denied):
                return await _throttled(ctx, attempt, permit)
            ctx.meter.waited(free, time.monotonic() - asked)
            call.permit = permit
            call.started_at = datetime.now(UTC)
            _calling(ctx)
            with ctx.meter.call():
                result = await ctx.client.send(body, lease.models_sent)
            call.result = result
            outcome = classify(result, lease.body)
            call.answered(outcome)
            verdict: Verdict = "ok" if isinstance(outcome, Success) else outcome.verdict
            reason = outcome.message if isinstance(outcome, Failure) else ""
            breaker = await asyncio.shield(_release(ctx, call, lease, verdict, reason))
    except asyncio.CancelledError:
        await asyncio.shield(_stopped(ctx, attempt, call))
        raise
    finally:
        if not call.released and call.permit is not None:
            # An error between the permit and its release: the permit goes back, its call marked given up.
            await asyncio.shield(_release(ctx, call, lease, "aborted" if call.sent else "unsent"))
    ctx.meter.called(lease.models_sent, outcome, result.latency_ms)
    if isinstance(outcome, Failure) and (
        outcome.verdict == "down" or (outcome.verdict == "fail" and breaker == "open")
    ):
        outcome = _outage(outcome)
        log.warning("OpenRouter unreachable: every worker waits for a probe", reason=outcome.message)
    if outcome.usage is not None:
        await ctx.prices.fill(outcome.usage, outcome.model)
        ctx.meter.used(outcome.model or lease.models_sent[0], outcome.usage)
    if isinstance(outcome, Success):
        outcome = await checked_answer(ctx.replies, body, outcome)
    started_at = call.started_at or datetime.now(UTC)
    name = None if part is None else part.name
    if isinstance(outcome, Success):
        success = outcome
        if part is not None and not part.final:
            await _persist(
                "part", lambda: attempt.answer_part(success, part.name, started_at, result.latency_ms)
            )
            ctx.feed_now.set()
            return TaskEnd.PART
        stored = await _persist(
            "result", lambda: attempt.complete(success, started_at, result.latency_ms, name)
        )
        if stored:
            ctx.meter.finished(RequestStatus.COMPLETED)
        return TaskEnd.COMPLETED if stored else TaskEnd.COMPLETED_ELSEWHERE
    return await _record_failure(ctx, attempt, free, result.latency_ms, outcome, started_at, name)


async def _stopped(ctx: WorkerContext, attempt: records.Attempt, call: _Call) -> None:
    """The task was cancelled: give the request back (the worker stops) or fail the attempt (arq's timeout).

    Bounded in time, as a second Ctrl-C means now: a write that cannot be made in time is left to the lease,
    whose expiry the feeder turns into the same outcome.
    """
    try:
        async with asyncio.timeout(STOPPED_WRITE_SECONDS):
            await _give_back(ctx, attempt, call)
    except (TimeoutError, DBAPIError, OSError) as exc:
        log.warning(
            "could not record the stop; the lease expires instead",
            request_id=attempt.lease.request_id,
            error=str(exc),
        )


async def _give_back(ctx: WorkerContext, attempt: records.Attempt, call: _Call) -> None:
    if call.permit is not None and not call.released:
        await _release(ctx, call, attempt.lease, "aborted" if call.sent else "unsent")
    if not call.sent:
        await attempt.give_back(0.0)
    elif ctx.stopping.is_set():
        await attempt.abandon("the worker stopped during the call")
    else:
        # Not a stopping worker: arq's own timeout, which only a call stuck past every deadline meets.
        failure = Failure(
            Outcome.RETRY, "task_timeout", "the call outlived the task's timeout and was cut off"
        )
        latency = int((datetime.now(UTC) - call.started_at).total_seconds() * 1000) if call.started_at else 0
        await _record_failure(ctx, attempt, False, latency, failure, call.started_at or datetime.now(UTC))
