"""Why a running batch waits its turn: the batches it shares the fleet with, its priority, its slots."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.core.sql import sql
from jobs.core.states import BatchPriority

__all__ = ["Competition", "Later", "read_competition", "read_later", "read_running_by_kind"]

# The running batches of one kind of upstream, by priority: a handful of rows, on the index of active batches.
_COMPETITION = sql(
    """
    SELECT priority, count(*) AS batches FROM batch
    WHERE status = {B.IN_PROGRESS} AND simulated = :simulated AND id <> :batch_id
    GROUP BY priority
    """
)

# Every running batch, by kind of upstream and priority: what a page of several batches weighs each against.
_RUNNING_BY_KIND = sql(
    "SELECT simulated, priority, count(*) AS batches FROM batch WHERE status = {B.IN_PROGRESS}"
    " GROUP BY simulated, priority"
)

# A batch's requests waiting for a moment to come (a free-tier slot held for them, a retry, a cool-down): counted
# up to a bound, so a status of a million-request batch stays a quick read.
_LATER = sql(
    """
    SELECT count(*) AS waiting, min(next_attempt_at) AS next_at FROM (
        SELECT next_attempt_at FROM request
        WHERE batch_id = :batch_id AND status = {R.PENDING} AND next_attempt_at > now()
        LIMIT 100000
    ) later
    """
)

_RANK = {p: i for i, p in enumerate(BatchPriority)}


@dataclass(slots=True, frozen=True)
class Competition:
    """The other running batches of a batch's kind of upstream, by priority."""

    others: dict[str, int]

    @classmethod
    def of(cls, running: dict[tuple[bool, str], int], simulated: bool, priority: str) -> Competition:
        """The competition of one running batch, from every running batch by kind and priority."""
        others = {p: n for (kind, p), n in running.items() if kind == simulated}
        others[priority] = max(0, others.get(priority, 0) - 1)
        return cls(others)

    def ahead(self, priority: str) -> int:
        """Running batches whose priority goes before this one's."""
        rank = _RANK[BatchPriority(priority)]
        return sum(n for p, n in self.others.items() if _RANK[BatchPriority(p)] < rank)

    def alongside(self, priority: str) -> int:
        """Running batches of the same priority, which share the fleet with it."""
        return self.others.get(priority, 0)

    def says(self, priority: str, running: int) -> str | None:
        """One sentence on the batch's turn, or None when it has the fleet to itself."""
        ahead, alongside = self.ahead(priority), self.alongside(priority)
        slots = f"it holds {running} worker slot{'s' if running != 1 else ''}"
        if ahead:
            return (
                f"priority {priority}: {ahead} running batch{'es' if ahead != 1 else ''} of a higher priority "
                f"go first; {slots}"
            )
        if alongside:
            return (
                f"shares the fleet fairly with {alongside} other {priority} batch{'es' if alongside != 1 else ''} "
                f"(each owner an equal part, split between its batches); {slots}"
            )
        return None


async def read_competition(conn: AsyncConnection, batch_id: str, simulated: bool) -> Competition:
    """The other running batches of the batch's kind of upstream, by priority."""
    rows = await conn.execute(_COMPETITION, {"batch_id": batch_id, "simulated": simulated})
    return Competition({str(r.priority): int(r.batches) for r in rows})


async def read_running_by_kind(conn: AsyncConnection) -> dict[tuple[bool, str], int]:
    """Every running batch, counted by kind of upstream (simulated or not) and priority."""
    rows = await conn.execute(_RUNNING_BY_KIND)
    return {(bool(r.simulated), str(r.priority)): int(r.batches) for r in rows}


@dataclass(slots=True, frozen=True)
class Later:
    """A batch's requests that wait for their moment, and when the first one comes."""

    waiting: int
    next_at: datetime | None

    def says(self, now: datetime) -> str | None:
        """One sentence, or None when none waits."""
        if not self.waiting or self.next_at is None:
            return None
        seconds = max(0.0, (self.next_at - now).total_seconds())
        return (
            f"{self.waiting} request{'s' if self.waiting != 1 else ''} wait for their moment (a free-tier slot held "
            f"for them, a retry or a cool-down), the next in {seconds:.0f} s, holding no worker slot meanwhile"
        )


async def read_later(conn: AsyncConnection, batch_id: str) -> Later:
    """The batch's requests that wait for a moment to come, up to 100,000 of them."""
    row = (await conn.execute(_LATER, {"batch_id": batch_id})).one()
    return Later(int(row.waiting), row.next_at)
