"""What every task of a worker process shares, built once at its start, and the typed way to reach it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.settings import Settings
from worker.account import AccountLimits
from worker.meter import Meter
from worker.openrouter import OpenRouterClient
from worker.pricing import PriceBook
from worker.replycheck import ReplyChecker
from worker.report import WorkerReport
from worker.throttle import Throttle

__all__ = ["CONTEXT_KEY", "WorkerContext", "context"]

# Where the context lives in arq's ctx dict, beside arq's own keys (`redis`, `job_id`, …).
CONTEXT_KEY = "orbatch"


@dataclass(slots=True)
class WorkerContext:
    """The shared clients and settings of one worker process."""

    settings: Settings
    engine: AsyncEngine
    client: OpenRouterClient
    throttle: Throttle
    prices: PriceBook
    replies: ReplyChecker
    # host:pid:nonce, recorded on leases and attempt rows.
    owner: str
    # The upstream is orbatch's simulator (its GET /key says so): its calls count against no real account.
    simulated: bool = False
    # Set when the worker is asked to stop: tasks send no new call and give their requests back.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    report: WorkerReport = field(default_factory=WorkerReport)
    # What it counts for /metrics and its heartbeat.
    meter: Meter = field(default_factory=Meter)
    # What GET /key said of the account last (None before the first reading).
    account: AccountLimits | None = None
    # The arq queue this worker takes jobs from now: its upstream kind's (or a run's own), and what it feeds.
    queue: str = ""
    # Moves the arq worker to another queue when the upstream's kind changes (a fleet worker; None for a run's).
    follow: Callable[[str], None] | None = None
    # Tasks whose upstream call was sent and is not yet recorded: the only ones a graceful stop waits for.
    calling: set[asyncio.Task[Any]] = field(default_factory=set)
    # Set by a task that gave a request back due at once (a part of a split record answered): the worker's
    # feeder runs its next tick now rather than after its interval, so the next part is queued at once.
    feed_now: asyncio.Event = field(default_factory=asyncio.Event)


def context(arq_ctx: Mapping[str, Any]) -> WorkerContext:
    """The context arq hands every task; a clear error if the worker's startup never built it."""
    ctx = arq_ctx.get(CONTEXT_KEY)
    if not isinstance(ctx, WorkerContext):
        raise RuntimeError("the worker's context is missing: its on_startup did not run")
    return ctx
