"""What a task came to: the word its return value, the worker's summary and the tasks metric's label use."""

from __future__ import annotations

from enum import StrEnum

from jobs.core.states import Outcome
from worker.throttle import DeniedKind

__all__ = ["TaskEnd", "TaskResult", "throttled"]


class TaskEnd(StrEnum):
    """A task's end other than a failed call (those end with the call's `Outcome`)."""

    COMPLETED = "completed"
    # Answered, but another worker's call stored the request's answer first (its lease had expired).
    COMPLETED_ELSEWHERE = "completed-elsewhere"
    REUSED = "reused"  # --dedupe: an identical request's answer
    # A part of a record summarised in parts was answered; the request goes on with its next part.
    PART = "part-answered"
    REFUSED = "refused"  # --free-only and a paid model: not sent
    WAITING_FOR_TWIN = "waiting-for-twin"
    STOPPING = "stopping"
    SKIPPED = "skipped"  # nothing to lease: done, cancelled, or taken by another worker
    INTERNAL_ERROR = "internal-error"
    WAITING_OUTAGE = "waiting-outage"
    REDIS_UNREACHABLE = "redis-unreachable"
    THROTTLED_DAILY = "throttled-daily"
    THROTTLED_RATE = "throttled-rate"
    THROTTLED_COOLDOWN = "throttled-cooldown"
    THROTTLED_SLOT = "throttled-slot"


TaskResult = TaskEnd | Outcome


def throttled(kind: DeniedKind) -> TaskEnd:
    """The end of a task given back because the throttle had no slot for it now."""
    return TaskEnd(f"throttled-{kind.value}")
