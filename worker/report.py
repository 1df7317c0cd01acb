"""What a worker says it is doing: a line at start, one per batch it starts or sees finish, a periodic summary."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url

from jobs.core.logs import get_logger
from jobs.core.states import Outcome
from worker.ends import TaskEnd, TaskResult

__all__ = ["WorkerReport", "where"]

# A worker says what it did (answered, failed, rate, waits) this often, when anything happened.
WORKER_SUMMARY_SECONDS = 30.0

log = get_logger("orbatch.worker")


def where(url: str) -> str:
    """A service's address without its credentials (`host:port/db`, or the socket folder)."""
    parsed = make_url(url)
    host = parsed.host or str(parsed.query.get("host", "local socket"))
    port = f":{parsed.port}" if parsed.port else ""
    database = f"/{parsed.database}" if parsed.database else ""
    return f"{host}{port}{database}"


@dataclass(slots=True)
class WorkerReport:
    """Counts what the worker's tasks came to, and says so now and then."""

    outcomes: collections.Counter[TaskResult] = field(default_factory=collections.Counter)
    batches: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    _said: float = field(default_factory=time.monotonic)
    _done_then: int = 0

    def task(self, batch_id: str | None, outcome: TaskResult) -> None:
        """One task ended with `outcome` (its return value); a batch seen for the first time is said once."""
        self.outcomes[outcome] += 1
        if batch_id is not None and batch_id not in self.batches:
            self.batches.add(batch_id)
            log.info("working on a batch", batch_id=batch_id)

    def finished(self, batch_ids: list[str]) -> None:
        """Batches this worker's feeder found done."""
        for batch_id in batch_ids:
            log.info("batch finished", batch_id=batch_id)

    def summary(self) -> None:
        """One line: requests answered and failed, calls, rate, and what tasks waited for, since the last."""
        now = time.monotonic()
        done = sum(
            self.outcomes[end] for end in (TaskEnd.COMPLETED, TaskEnd.COMPLETED_ELSEWHERE, TaskEnd.REUSED)
        )
        waits = {
            k.value.removeprefix("throttled-"): n
            for k, n in self.outcomes.items()
            if k.startswith("throttled-")
        }
        waits["outage"] = self.outcomes[TaskEnd.WAITING_OUTAGE]
        rate = (done - self._done_then) / max(now - self._said, 1e-9)
        log.info(
            "worker summary",
            answered=done,
            failed_attempts=sum(n for k, n in self.outcomes.items() if k in _FAILURES),
            rate_per_second=round(rate, 2),
            waits={k: n for k, n in waits.items() if n},
            batches=len(self.batches),
        )
        self._said, self._done_then = now, done

    async def every(self, seconds: float = WORKER_SUMMARY_SECONDS) -> None:
        """Say the summary every so often, when anything happened."""
        last_total = 0
        while True:
            await asyncio.sleep(seconds)
            total = sum(self.outcomes.values())
            if total != last_total:
                self.summary()
                last_total = total


# Task outcomes that are failed attempts (the retry policy's classes).
_FAILURES: frozenset[TaskResult] = frozenset(
    {Outcome.RETRY, Outcome.FALLBACK, Outcome.PARK, Outcome.FAIL, Outcome.OUTAGE, TaskEnd.INTERNAL_ERROR}
)
