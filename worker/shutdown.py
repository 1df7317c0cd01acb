"""Stopping a worker gracefully: no new job, calls in flight finish within a grace period, the rest given back.

A SIGTERM (or a first Ctrl-C) stops the worker taking jobs and tells its tasks to send no new call: a task
waiting for a throttle slot gives its request back at once, and a call already sent runs to its end, so what it
costs is recorded and it is not called again. When the grace period ends, or at a second signal, what is left
is cancelled: those calls are recorded `abandoned` and their requests return to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq.worker import Worker

from jobs.core.constants import REDIS_SPARE_SECONDS
from jobs.core.logs import get_logger
from worker.context import CONTEXT_KEY, WorkerContext

__all__ = ["GracefulStop", "close_worker"]

log = get_logger(__name__)


class GracefulStop:
    """The two-step stop of one worker: `request()` once to drain, again to stop now."""

    def __init__(self, worker: Worker, grace: float) -> None:
        self.worker = worker
        self.grace = grace
        self.requested = asyncio.Event()
        self.now = asyncio.Event()

    def request(self) -> None:
        """A stop was asked for (a signal handler): the first asks to drain, the second to stop now."""
        if self.requested.is_set():
            self.now.set()
        self.requested.set()

    async def drain(self) -> int:
        """Take no new job, let calls in flight end within the grace period; how many were still running.

        Only tasks whose call was sent are waited for: the others have nothing to pay for and give their
        requests back at once, or are cancelled after a moment (one stuck on a Redis that went away, say).
        """
        self.worker.allow_pick_jobs = False
        ctx = self.worker.ctx.get(CONTEXT_KEY)
        calling: set[asyncio.Task[Any]] = set()
        if isinstance(ctx, WorkerContext):
            ctx.stopping.set()
            calling = ctx.calling
        tasks = [t for t in self.worker.tasks.values() if not t.done()]
        if tasks:
            log.warning(
                "stopping: letting calls in flight finish",
                calls=len(calling),
                grace_seconds=self.grace,
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.grace
            unsent_by = loop.time() + 2 * REDIS_SPARE_SECONDS
            now = asyncio.create_task(self.now.wait())
            try:
                while not now.done() and (pending := [t for t in tasks if not t.done()]):
                    if loop.time() >= unsent_by and not calling:
                        break  # what is left sent nothing: close_worker cancels it, and it gives back
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    await asyncio.wait(
                        [*pending, now], timeout=min(remaining, 0.5), return_when=asyncio.FIRST_COMPLETED
                    )
            finally:
                now.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await now
        left = len(calling)
        if left:
            log.warning("stopping now: calls still in flight are given back", calls=left)
        return left


async def close_worker(worker: Worker) -> None:
    """Cancel what still runs (calls recorded `abandoned`), wait for it, then close arq's worker.

    arq's own close gathers its tasks without `return_exceptions`, so one cancelled before its job began would
    raise out of it; they are settled here first.
    """
    tasks = list(worker.tasks.values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    worker.tasks.clear()
    await worker.close()
