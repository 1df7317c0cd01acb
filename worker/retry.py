"""The retry policy: what a failed attempt does to its request (wait and retry, move down the chain, stop)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from jobs.core.constants import MAX_MODELS_PER_CALL
from jobs.core.states import Outcome, RequestStatus
from worker.classify import Failure

__all__ = ["Decision", "backoff_seconds", "decide"]


@dataclass(slots=True, frozen=True)
class Decision:
    """The request's next state after a failed attempt."""

    status: RequestStatus
    failures: int
    chain_pos: int
    delay_seconds: float


def backoff_seconds(failures: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, so retries spread out."""
    ceiling = min(cap, base * 2.0 ** max(0, failures - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def decide(
    failure: Failure,
    *,
    failures: int,
    chain: list[str],
    chain_pos: int,
    max_attempts: int,
    base: float,
    cap: float,
    window: int | None = None,
) -> Decision:
    """Apply the policy; parking is decided by the caller and never spends an attempt. `window`: how many chain
    positions the call covered (the models sent and those skipped among them for their context; fewer than
    MAX_MODELS_PER_CALL for an embeddings call)."""
    if failure.outcome is Outcome.PARK:
        return Decision(RequestStatus.PENDING, failures, chain_pos, 0.0)
    if failure.outcome is Outcome.FAIL:
        return Decision(RequestStatus.FAILED, failures + 1, chain_pos, 0.0)
    if not failure.spends_attempt:
        wait = failure.retry_after if failure.retry_after is not None else backoff_seconds(1, base, cap)
        return Decision(RequestStatus.PENDING, failures, chain_pos, wait)
    spent = failures + 1
    if failure.outcome is Outcome.FALLBACK:
        following = chain_pos + (window or MAX_MODELS_PER_CALL)
        next_pos = following if following < len(chain) else 0
        # Moving to models not tried yet needs no wait; wrapping round to the start of the chain does.
        delay = 0.0 if next_pos > chain_pos else backoff_seconds(spent, base, cap)
    else:
        next_pos = chain_pos
        delay = backoff_seconds(spent, base, cap)
    if spent >= max_attempts:
        return Decision(RequestStatus.FAILED, spent, next_pos, 0.0)
    if failure.retry_after is not None:
        delay = max(delay, failure.retry_after)
    return Decision(RequestStatus.PENDING, spent, next_pos, delay)
