"""A batch's standing read from Postgres: its state, request counts, tokens and cost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.errors import NotFound
from jobs.models import Attempt, Batch, Request, RequestStatus

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


async def batch_summary(conn: AsyncConnection, batch_id: str) -> BatchSummary:
    """The summary of one batch; BatchNotFound when there is none."""
    batch = (await conn.execute(select(Batch).where(Batch.id == batch_id))).one_or_none()
    if batch is None:
        raise BatchNotFound(batch_id)
    counts = {
        status: int(n)
        for status, n in await conn.execute(
            select(Request.status, func.count()).where(Request.batch_id == batch_id).group_by(Request.status)
        )
    }
    usage = (
        await conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(Attempt.cost), 0),
                func.coalesce(func.sum(Attempt.prompt_tokens), 0),
                func.coalesce(func.sum(Attempt.completion_tokens), 0),
            ).where(Attempt.batch_id == batch_id)
        )
    ).one()
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
        counts=counts,
        attempts=int(usage[0]),
        cost=Decimal(usage[1] or 0),
        prompt_tokens=int(usage[2] or 0),
        completion_tokens=int(usage[3] or 0),
    )


async def list_batches(conn: AsyncConnection, limit: int = 20) -> list[BatchSummary]:
    """The most recent batches, newest first."""
    ids = (
        (await conn.execute(select(Batch.id).order_by(Batch.created_at.desc()).limit(limit))).scalars().all()
    )
    return [await batch_summary(conn, batch_id) for batch_id in ids]
