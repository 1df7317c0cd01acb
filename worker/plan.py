"""What a worker takes: the jobs of one arq queue, fed with every running batch or with one batch only."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WorkerPlan"]


@dataclass(slots=True, frozen=True)
class WorkerPlan:
    """A fleet worker feeds and works every running batch; `orbatch run` only its own, from its own queue."""

    queue: str
    only_batch: str | None = None
