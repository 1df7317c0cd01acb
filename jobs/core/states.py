"""The words for where a batch, a request and an attempt stand, and why a batch waits."""

from __future__ import annotations

import enum

__all__ = [
    "TERMINAL_BATCH_STATUSES",
    "BatchPriority",
    "BatchStatus",
    "Outcome",
    "PauseReason",
    "RequestStatus",
]


class BatchStatus(enum.StrEnum):
    """A batch's lifecycle; the words are OpenAI Batch API's where they mean the same, plus `paused`."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    # Past its completion window (a batch created through the API): unfinished requests were cancelled,
    # finished ones are kept.
    EXPIRED = "expired"


# A batch in one of these runs no more calls; only `retry --failed` reopens a completed one.
TERMINAL_BATCH_STATUSES = (
    BatchStatus.COMPLETED,
    BatchStatus.FAILED,
    BatchStatus.CANCELLED,
    BatchStatus.EXPIRED,
)


class PauseReason(enum.StrEnum):
    """Why a paused batch waits: a spent quota, its budget, the account's credits, a rejected key, or its
    `orbatch run` was stopped (it waits for that command again, or for `orbatch resume`)."""

    QUOTA = "quota"
    BUDGET = "budget"
    CREDITS = "credits"
    AUTH = "auth"
    INTERRUPTED = "interrupted"


class RequestStatus(enum.StrEnum):
    """A request is pending (due at next_attempt_at), running under a lease, or finished."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Outcome(enum.StrEnum):
    """What an attempt came to; the failure classes are the retry policy's (see docs/errors.md)."""

    IN_FLIGHT = "in_flight"
    SUCCESS = "success"
    RETRY = "retry"
    FALLBACK = "fallback"
    PARK = "park"
    FAIL = "fail"
    # The call was made while OpenRouter as a whole was failing (it tripped the outage breaker, or probed
    # it): it spends none of the request's attempts.
    OUTAGE = "outage"
    ABANDONED = "abandoned"
    # No call: an identical request's stored answer was reused (`submit --dedupe`).
    REUSED = "reused"


class BatchPriority(enum.StrEnum):
    """Which batches run first: every `urgent` one that can run now before any `normal`, and those before any
    `background`; within a priority the fleet is shared fairly between owners and their batches."""

    URGENT = "urgent"
    NORMAL = "normal"
    BACKGROUND = "background"
