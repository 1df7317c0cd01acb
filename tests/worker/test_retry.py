"""The retry policy: backoff with jitter, walking the model chain, and the attempt budget."""

from __future__ import annotations

from jobs.core.states import Outcome, PauseReason, RequestStatus
from worker.classify import Failure
from worker.retry import backoff_seconds, decide

CHAIN = ["a", "b", "c", "d", "e"]


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)]:
        samples = [backoff_seconds(failures, base=1.0, cap=30.0) for _ in range(200)]
        assert min(samples) >= ceiling / 2
        assert max(samples) <= ceiling
        assert len(set(samples)) > 1


def test_a_retry_keeps_the_models_and_waits() -> None:
    decision = decide(
        Failure(Outcome.RETRY, "500", "x"),
        failures=0,
        chain=CHAIN,
        chain_pos=0,
        max_attempts=5,
        base=1,
        cap=10,
    )
    assert decision.status is RequestStatus.PENDING
    assert (decision.failures, decision.chain_pos) == (1, 0)
    assert 0.5 <= decision.delay_seconds <= 1


def test_a_fallback_moves_to_the_next_three_models_at_once_and_wraps_round() -> None:
    failure = Failure(Outcome.FALLBACK, "503", "down")
    first = decide(failure, failures=0, chain=CHAIN, chain_pos=0, max_attempts=5, base=1, cap=10)
    assert (first.chain_pos, first.delay_seconds) == (3, 0.0)
    second = decide(failure, failures=1, chain=CHAIN, chain_pos=3, max_attempts=5, base=1, cap=10)
    assert second.chain_pos == 0
    assert second.delay_seconds > 0


def test_retry_after_is_honoured() -> None:
    decision = decide(
        Failure(Outcome.RETRY, "429", "x", retry_after=42.0),
        failures=0,
        chain=CHAIN,
        chain_pos=0,
        max_attempts=5,
        base=1,
        cap=10,
    )
    assert decision.delay_seconds == 42.0


def test_the_last_allowed_failure_fails_the_request() -> None:
    decision = decide(
        Failure(Outcome.RETRY, "500", "x"),
        failures=4,
        chain=CHAIN,
        chain_pos=0,
        max_attempts=5,
        base=1,
        cap=10,
    )
    assert decision.status is RequestStatus.FAILED


def test_fail_now_fails_and_park_spends_no_attempt() -> None:
    failed = decide(
        Failure(Outcome.FAIL, "400", "x"),
        failures=0,
        chain=CHAIN,
        chain_pos=0,
        max_attempts=5,
        base=1,
        cap=10,
    )
    assert failed.status is RequestStatus.FAILED
    parked = decide(
        Failure(Outcome.PARK, "401", "x", park_reason=PauseReason.AUTH),
        failures=2,
        chain=CHAIN,
        chain_pos=0,
        max_attempts=5,
        base=1,
        cap=10,
    )
    assert (parked.status, parked.failures) == (RequestStatus.PENDING, 2)
