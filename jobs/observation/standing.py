"""A batch's standing read from Postgres: its state, request counts, tokens and cost, from its tallies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.core.errors import NotFound
from jobs.core.models import Batch, BatchTally
from jobs.core.states import BatchPriority, Lane, RequestStatus

__all__ = ["BatchNotFound", "BatchSummary", "batch_summary", "list_batches"]


class BatchNotFound(NotFound):
    """No batch has that id."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch {batch_id!r}: `orbatch status` lists the batches", param="batch")
        self.batch_id = batch_id


@dataclass(slots=True)
class BatchSummary:
    """Everything `status` shows about one batch."""

    id: str
    name: str | None
    status: str
    pause_reason: str | None
    pause_message: str | None
    resume_at: datetime | None
    models: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    invalid_lines: int
    counts: dict[str, int]
    attempts: int
    cost: Decimal
    prompt_tokens: int
    completion_tokens: int
    metadata: dict[str, Any] | None = None
    simulated: bool = False
    priority: str = BatchPriority.NORMAL.value
    # How its requests reach OpenRouter (`live`, `batch`, `auto`), and what the batch lane said, if anything.
    lane: str = Lane.LIVE.value
    lane_note: str | None = None

    @property
    def total(self) -> int:
        """Requests in the batch."""
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        """The `status --json` object."""
        return {
            "id": self.id,
            "object": "batch",
            "name": self.name,
            "status": self.status,
            "pause": None
            if self.pause_reason is None
            else {
                "reason": self.pause_reason,
                "message": self.pause_message,
                "resume_at": self.resume_at.isoformat() if self.resume_at else None,
            },
            "models": self.models,
            "metadata": self.metadata or {},
            "simulated": self.simulated,
            "priority": self.priority,
            "lane": self.lane,
            "lane_note": self.lane_note,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "request_counts": {
                "total": self.total,
                **{s.value: self.counts.get(s.value, 0) for s in RequestStatus},
            },
            "invalid_lines": self.invalid_lines,
            "attempts": self.attempts,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "cost": str(self.cost),
        }


# One row of sums per batch: its shards of the tally, whatever the batch's size.
_TALLY = select(
    BatchTally.batch_id,
    *(func.coalesce(func.sum(getattr(BatchTally, s.value)), 0).label(s.value) for s in RequestStatus),
    func.coalesce(func.sum(BatchTally.calls), 0).label("calls"),
    func.coalesce(func.sum(BatchTally.cost), 0).label("cost"),
    func.coalesce(func.sum(BatchTally.prompt_tokens), 0).label("prompt_tokens"),
    func.coalesce(func.sum(BatchTally.completion_tokens), 0).label("completion_tokens"),
).group_by(BatchTally.batch_id)


def _summary(batch: Any, tally: Any) -> BatchSummary:
    return BatchSummary(
        id=batch.id,
        name=batch.name,
        status=batch.status,
        pause_reason=batch.pause_reason,
        pause_message=batch.pause_message,
        resume_at=batch.resume_at,
        models=list(batch.models),
        created_at=batch.created_at,
        started_at=batch.started_at,
        finished_at=batch.finished_at,
        invalid_lines=batch.invalid_lines,
        counts={s.value: int(getattr(tally, s.value)) for s in RequestStatus if tally is not None},
        attempts=int(tally.calls) if tally is not None else 0,
        cost=Decimal(tally.cost) if tally is not None else Decimal(0),
        prompt_tokens=int(tally.prompt_tokens) if tally is not None else 0,
        completion_tokens=int(tally.completion_tokens) if tally is not None else 0,
        metadata=batch.metadata,
        simulated=batch.simulated,
        priority=batch.priority,
        lane=batch.lane,
        lane_note=batch.lane_note,
    )


async def batch_summary(conn: AsyncConnection, batch_id: str) -> BatchSummary:
    """The summary of one batch; BatchNotFound when there is none."""
    batch = (await conn.execute(select(Batch).where(Batch.id == batch_id))).one_or_none()
    if batch is None:
        raise BatchNotFound(batch_id)
    tally = (await conn.execute(_TALLY.where(BatchTally.batch_id == batch_id))).one_or_none()
    return _summary(batch, tally)


async def list_batches(conn: AsyncConnection, limit: int = 20) -> list[BatchSummary]:
    """The most recent batches, newest first."""
    batches = (await conn.execute(select(Batch).order_by(Batch.created_at.desc()).limit(limit))).all()
    ids = [b.id for b in batches]
    tallies = {row.batch_id: row for row in await conn.execute(_TALLY.where(BatchTally.batch_id.in_(ids)))}
    return [_summary(b, tallies.get(b.id)) for b in batches]
