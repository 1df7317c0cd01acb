"""The arq task: lease a request, call OpenRouter, record the attempt and, on success, the result."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.logs import get_logger
from jobs.models import Outcome
from jobs.settings import Settings
from worker import records
from worker.classify import Success, classify
from worker.openrouter import OpenRouterClient
from worker.retry import decide

__all__ = ["WorkerContext", "run_request"]

log = get_logger(__name__)
T = TypeVar("T")

# A response in hand is worth waiting for: keep retrying its write through a database restart.
_PERSIST_DEADLINE_SECONDS = 120.0


@dataclass(slots=True)
class WorkerContext:
    """What every task of a worker process shares, built once at startup."""

    settings: Settings
    engine: AsyncEngine
    client: OpenRouterClient
    owner: str


def _connection_lost(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, OSError)


async def _persist(what: str, write: Callable[[], Awaitable[T]]) -> T:
    """Run a database write, retrying through connection failures for a bounded time."""
    deadline = time.monotonic() + _PERSIST_DEADLINE_SECONDS
    delay = 0.2
    while True:
        try:
            return await write()
        except (DBAPIError, OSError) as exc:
            if not _connection_lost(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("database write failed; retrying", what=what, error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextlib.asynccontextmanager
async def _renewing(ctx: WorkerContext, lease: records.Lease) -> AsyncIterator[None]:
    """Keep the lease alive while the call runs, so only a dead worker's lease expires."""
    interval = ctx.settings.lease_seconds / 3

    async def renew_forever() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if not await records.renew(ctx.engine, lease, ctx.owner, ctx.settings.lease_seconds):
                    log.warning("lease lost; the answer will still be recorded", request_id=lease.request_id)
                    return
            except (DBAPIError, OSError) as exc:
                log.warning("lease renewal failed", request_id=lease.request_id, error=str(exc))

    renewer = asyncio.create_task(renew_forever())
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer


async def run_request(arq_ctx: dict[str, Any], request_id: int, attempts: int) -> str:
    """Run one attempt of one request; returns what happened, for arq's log."""
    ctx: WorkerContext = arq_ctx["orbatch"]
    settings = ctx.settings
    lease = await _persist(
        "lease",
        lambda: records.take_lease(ctx.engine, request_id, attempts, ctx.owner, settings.lease_seconds),
    )
    if lease is None:
        return "skipped"
    try:
        async with _renewing(ctx, lease):
            call = await ctx.client.chat(lease.body, lease.models_sent)
    except asyncio.CancelledError:
        await asyncio.shield(
            records.abandon(ctx.engine, lease, ctx.owner, "the worker stopped during the call")
        )
        raise
    outcome = classify(call)
    if isinstance(outcome, Success):
        stored = await _persist(
            "result", lambda: records.complete(ctx.engine, lease, outcome, call.latency_ms)
        )
        return "completed" if stored else "completed-elsewhere"
    decision = decide(
        outcome,
        failures=lease.failures,
        chain=lease.chain,
        chain_pos=lease.chain_pos,
        max_attempts=lease.max_attempts,
        base=settings.retry_base_seconds,
        cap=settings.retry_max_seconds,
    )
    await _persist(
        "failure", lambda: records.fail(ctx.engine, lease, ctx.owner, outcome, decision, call.latency_ms)
    )
    log.info(
        "attempt failed",
        request_id=lease.request_id,
        batch_id=lease.batch_id,
        attempt=lease.number,
        outcome=outcome.outcome.value,
        code=outcome.code,
        status=outcome.status,
        message=outcome.message,
        next=decision.status.value,
        retry_in=round(decision.delay_seconds, 2) if decision.status.value == "pending" else None,
    )
    if outcome.outcome is Outcome.PARK:
        log.error(
            "batch paused", batch_id=lease.batch_id, reason=outcome.park_reason, message=outcome.message
        )
    return outcome.outcome.value
