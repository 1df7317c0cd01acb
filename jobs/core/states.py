"""The words for where a batch, a request and an attempt stand, and why a batch waits."""

from __future__ import annotations

import enum

__all__ = [
    "TERMINAL_BATCH_STATUSES",
    "BatchPriority",
    "BatchStatus",
    "Lane",
    "LongMode",
    "Outcome",
    "PauseReason",
    "RemoteState",
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
    """A request is pending (due at next_attempt_at), running under a lease, in the batch lane, or finished."""

    PENDING = "pending"
    RUNNING = "running"
    # Taken by the batch lane: waiting for a remote batch (OpenRouter's Batch API) or in one. No live worker
    # leases it; only its remote batch's line, or that batch ending without one, moves it on.
    REMOTE = "remote"
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


class Lane(enum.StrEnum):
    """How a batch's requests reach OpenRouter: live calls, OpenRouter's Batch API (about half price, minutes to
    24 h), or the Batch API for the requests that can wait and have a batch variant (`auto`)."""

    LIVE = "live"
    BATCH = "batch"
    AUTO = "auto"


class LongMode(enum.StrEnum):
    """What a batch does with a templated record too long for every model of its chain (`--long`): `split`
    summarises it in parts; without it, the record is a bad line."""

    SPLIT = "split"


class RemoteState(enum.StrEnum):
    """Where one remote batch (a `remote_batch` row) stands on orbatch's side."""

    # Its requests are chosen; the create is not sent yet.
    READY = "ready"
    # The create was sent (or is about to be) and its answer not stored: the remote id may exist unknown to us.
    SENDING = "sending"
    # OpenRouter has it (its id stored): polled until it ends.
    RUNNING = "running"
    # It ended on OpenRouter's side: its result pages are being stored.
    COLLECTING = "collecting"
    # Every line stored, and the requests it left unanswered given back.
    DONE = "done"
    # The create was refused (404/403: not enabled for the key; 400/413/422): never created, its requests live.
    REFUSED = "refused"
