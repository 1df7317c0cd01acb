"""The throttle's decisions, against the real Redis: pacing, daily count, in-flight cap, cool-down."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime
from typing import Any

import pytest
from arq.connections import ArqRedis

from tests.support import until
from worker.throttle import Denied, Permit, Throttle, ThrottleLimits


def limits(**overrides: float) -> ThrottleLimits:
    values: dict[str, float] = {
        "free_per_window": 10,
        "window_seconds": 1.0,
        "margin": 0.05,
        "free_per_day": 1000,
        "max_in_flight": 100,
        "max_wait_seconds": 5.0,
        "permit_ttl_seconds": 60.0,
    }
    values.update(overrides)
    return ThrottleLimits(**values)  # type: ignore[arg-type]


def make(redis: ArqRedis, made_today: int = 0, **overrides: float) -> Throttle:
    async def count_since(_: datetime) -> int:
        return made_today

    return Throttle(redis, "test", limits(**overrides), count_since)


async def day_count(throttle: Throttle) -> int:
    stored = await throttle.redis.get(throttle.keys["day"])
    return int(stored.decode().split(":")[1]) if stored else 0


async def _day_count_is(throttle: Throttle, count: int) -> bool:
    return await day_count(throttle) == count


async def test_free_requests_are_spaced_by_the_window_over_the_limit_plus_margin(redis: ArqRedis) -> None:
    throttle = make(redis)
    start = time.monotonic()
    grants = []
    for _ in range(6):
        permit = await throttle.acquire(free=True)
        assert isinstance(permit, Permit)
        grants.append(time.monotonic() - start)
    # Slots are exact on Redis's clock, so six grants span at least five intervals of 1 s / 10 + 5 %;
    # each gap as the caller sees it varies by its wake-up jitter only, which a machine running the suite
    # in parallel stretches to tens of milliseconds: half an interval is allowed for it.
    assert grants[-1] - grants[0] >= 5 * 0.105 - 0.05, grants
    assert min(b - a for a, b in itertools.pairwise(grants)) >= 0.05, grants
    assert throttle.limits.interval_ms == 105


async def test_concurrent_takers_never_share_a_slot(redis: ArqRedis) -> None:
    throttle = make(redis)
    woke: dict[str, int] = {}

    async def take() -> None:
        permit = await throttle.acquire(free=True)
        assert isinstance(permit, Permit)
        seconds, micros = await redis.time()
        woke[permit.id] = seconds * 1000 + micros // 1000

    await asyncio.gather(*(take() for _ in range(12)))
    # Each permit's slot, as booked on Redis's clock (its in-flight entry lapses a permit's ttl after its slot):
    # the booking is what decides, not how late a loaded machine wakes its taker.
    ttl_ms = int(throttle.limits.permit_ttl_seconds * 1000)
    booked = {
        member.decode(): int(score) - ttl_ms
        for member, score in await redis.zrange(throttle.keys["inflight"], 0, -1, withscores=True)
    }
    assert booked.keys() == woke.keys()
    slots = sorted(booked.values())
    interval = throttle.limits.interval_ms
    # Two takers sharing a slot would leave a gap of nothing between two bookings.
    assert min(b - a for a, b in itertools.pairwise(slots)) >= interval, slots
    # And no taker went before its slot.
    assert all(woke[permit] >= slot for permit, slot in booked.items()), (woke, booked)


async def test_paid_requests_are_not_paced(redis: ArqRedis) -> None:
    throttle = make(redis, free_per_window=1, window_seconds=10)
    start = time.monotonic()
    for _ in range(20):
        assert isinstance(await throttle.acquire(free=False), Permit)
    assert time.monotonic() - start < 2


async def test_the_daily_count_denies_without_consuming(redis: ArqRedis) -> None:
    throttle = make(redis, free_per_day=2, free_per_window=1000)
    assert isinstance(await throttle.acquire(free=True), Permit)
    assert isinstance(await throttle.acquire(free=True), Permit)
    denied = await throttle.acquire(free=True)
    assert isinstance(denied, Denied)
    assert denied.kind == "daily"
    assert 0 < denied.wait_seconds <= 86400
    assert await day_count(throttle) == 2


async def test_a_free_request_never_sent_gives_its_daily_count_back(redis: ArqRedis) -> None:
    throttle = make(redis, free_per_window=1000)
    permit = await throttle.acquire(free=True)
    assert isinstance(permit, Permit)
    await throttle.release(permit, "unsent")
    assert await day_count(throttle) == 0


async def test_the_in_flight_cap_holds_until_a_permit_comes_back(redis: ArqRedis) -> None:
    throttle = make(redis, max_in_flight=2)
    first = await throttle.acquire(free=False)
    second = await throttle.acquire(free=False)
    assert isinstance(first, Permit)
    assert isinstance(second, Permit)
    # Each try of the third taker is watched: it is refused for the cap three times (it keeps trying) and is
    # still waiting, not granted nor given up.
    refusals: list[str] = []
    reserve = throttle._reserve

    async def watched(**arguments: Any) -> Any:
        result = await reserve(**arguments)
        refusals.append(result[2].decode() if isinstance(result[2], bytes) else str(result[2]))
        return result

    throttle._reserve = watched  # type: ignore[assignment]
    third = asyncio.create_task(throttle.acquire(free=False))

    async def tried_three_times() -> bool:
        return len(refusals) >= 3

    await until(tried_three_times, "three tries of the third taker")
    assert set(refusals) == {"in_flight"}
    assert not third.done()
    await throttle.release(first, "ok")
    assert isinstance(await asyncio.wait_for(third, 2), Permit)


async def test_the_cool_down_only_moves_forward_and_holds_free_requests_only(redis: ArqRedis) -> None:
    throttle = make(redis, max_wait_seconds=0.5)
    now_ms = int(time.time() * 1000)
    assert await throttle.cool_down(True, now_ms + 5000) > 4
    assert await throttle.cool_down(True, now_ms + 1000) == pytest.approx(4.9, abs=0.2)
    denied = await throttle.acquire(free=True)
    assert isinstance(denied, Denied)
    assert denied.kind == "cooldown"
    assert 4 < denied.wait_seconds <= 5
    assert isinstance(await throttle.acquire(free=False), Permit)


async def test_a_reserved_slot_is_checked_again_before_it_fires(redis: ArqRedis) -> None:
    throttle = make(redis, free_per_window=1, window_seconds=3.0, margin=0.0)
    assert isinstance(await throttle.acquire(free=True), Permit)
    # The next slot is 3 s away; a 429 arrives meanwhile and holds everyone until 1.5 s after that slot (the
    # seconds leave room for a loaded machine's event loop).
    waiting = asyncio.create_task(throttle.acquire(free=True))
    # Its slot is booked (the day's count says so) before the 429 arrives.
    await until(lambda: _day_count_is(throttle, 2), "the waiting taker's slot booked")
    start = time.monotonic()
    await throttle.cool_down(True, int(time.time() * 1000) + 4300)
    assert isinstance(await waiting, Permit)
    assert time.monotonic() - start >= 4.2


async def test_a_slot_further_away_than_a_worker_waits_is_denied_not_reserved(redis: ArqRedis) -> None:
    throttle = make(redis, free_per_window=1, window_seconds=10, max_wait_seconds=1)
    assert isinstance(await throttle.acquire(free=True), Permit)
    denied = await throttle.acquire(free=True)
    assert isinstance(denied, Denied)
    assert denied.kind == "rate"
    assert 9 < denied.wait_seconds <= 10.5
    assert await day_count(throttle) == 1


async def test_a_lost_daily_count_is_rebuilt_from_the_calls_already_made(redis: ArqRedis) -> None:
    throttle = make(redis, made_today=4, free_per_day=5, free_per_window=1000)
    assert isinstance(await throttle.acquire(free=True), Permit)
    assert await day_count(throttle) == 5
    denied = await throttle.acquire(free=True)
    assert isinstance(denied, Denied)
    assert denied.kind == "daily"


async def redis_now_ms(redis: ArqRedis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def until_next_day(redis: ArqRedis, day_seconds: float, margin: float = 0.3) -> None:
    """Sleep until the free tier's day (scaled) has just begun, on Redis's clock."""
    day_ms = int(day_seconds * 1000)
    now = await redis_now_ms(redis)
    left = day_ms - now % day_ms
    if left < margin * 1000:
        left += day_ms
    await asyncio.sleep(left / 1000 + 0.05)


async def test_the_day_turns_for_everyone_at_once_and_a_refund_goes_to_the_day_it_was_booked(
    redis: ArqRedis,
) -> None:
    # A day of 2 s stands in for a UTC day: the same arithmetic on Redis's clock, without waiting for midnight.
    throttle = make(redis, free_per_day=3, free_per_window=1000, day_seconds=2.0)
    await until_next_day(redis, 2.0)
    booked = [await throttle.acquire(free=True) for _ in range(3)]
    assert all(isinstance(p, Permit) for p in booked)
    denied = await throttle.acquire(free=True)
    assert isinstance(denied, Denied)
    assert denied.kind == "daily"
    assert denied.wait_seconds <= 2.0
    await until_next_day(redis, 2.0)
    # A new day: the quota is whole again. A slot of yesterday's that was never sent gives nothing to today.
    fresh = await throttle.acquire(free=True)
    assert isinstance(fresh, Permit)
    assert fresh.day == booked[0].day + 1  # type: ignore[union-attr]
    await throttle.release(booked[0], "unsent")  # type: ignore[arg-type]
    assert await day_count(throttle) == 1
    await throttle.release(fresh, "unsent")
    assert await day_count(throttle) == 0


async def test_a_permit_is_kept_alive_on_redis_s_clock_not_the_worker_s(redis: ArqRedis) -> None:
    throttle = make(redis, max_in_flight=1, permit_ttl_seconds=1.0)
    permit = await throttle.acquire(free=False)
    assert isinstance(permit, Permit)
    await throttle.renew(permit)
    expiry = await redis.zscore(throttle.keys["inflight"], permit.id)
    assert expiry is not None
    assert abs(expiry - (await redis_now_ms(redis) + 1000)) < 200


async def test_an_unreachable_upstream_opens_the_breaker_and_one_probe_at_a_time_closes_it(
    redis: ArqRedis,
) -> None:
    throttle = make(redis, probe_base_seconds=0.3, probe_max_seconds=1.0)
    first = await throttle.acquire(free=False)
    assert isinstance(first, Permit)
    assert await throttle.release(first, "down", 1, "m", "connection refused") == "open"
    denied = await throttle.acquire(free=False)
    assert isinstance(denied, Denied)
    assert denied.kind == "outage"
    assert 0 < denied.wait_seconds <= 0.3
    await asyncio.sleep(0.35)
    probe = await throttle.acquire(free=False)
    assert isinstance(probe, Permit)
    assert probe.probe
    # While the probe is out nobody else calls.
    other = await throttle.acquire(free=False)
    assert isinstance(other, Denied)
    assert other.kind == "outage"
    assert await throttle.release(probe, "down", 2, "m", "still refused") == "open"
    state = await throttle.breaker()
    assert state is not None
    assert state.probes == 1
    assert "still refused" in state.describe()
    # The next probe waits longer (doubling, capped), then an answer closes the breaker for everyone.
    assert (state.next_probe - state.since).total_seconds() > 0.5
    await asyncio.sleep(0.7)
    probe = await throttle.acquire(free=False)
    assert isinstance(probe, Permit)
    assert probe.probe
    assert await throttle.release(probe, "ok") == "closed"
    assert await throttle.breaker() is None
    assert isinstance(await throttle.acquire(free=False), Permit)


async def test_a_run_of_5xx_across_requests_and_models_opens_the_breaker_but_one_request_s_do_not(
    redis: ArqRedis,
) -> None:
    throttle = make(redis, breaker_run=4)
    # One request failing again and again is that request's problem: no breaker.
    for _ in range(6):
        permit = await throttle.acquire(free=False)
        assert isinstance(permit, Permit)
        assert await throttle.release(permit, "fail", 7, "a/model", "HTTP 500") == "ok"
    assert await throttle.breaker() is None
    # An answer in between starts the count again.
    permit = await throttle.acquire(free=False)
    assert isinstance(permit, Permit)
    await throttle.release(permit, "ok")
    verdicts = []
    for request, model in ((1, "a"), (2, "b"), (3, "a"), (4, "c")):
        permit = await throttle.acquire(free=False)
        assert isinstance(permit, Permit)
        verdicts.append(await throttle.release(permit, "fail", request, model, "HTTP 502"))
    assert verdicts == ["ok", "ok", "ok", "open"]
    assert await throttle.breaker() is not None
