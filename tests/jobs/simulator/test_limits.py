"""The simulated free tier: scaled time, the 429s of the minute and the day, the limits GET /key reports."""

from __future__ import annotations

import time

from jobs.simulator.main import config_from_args
from tests.jobs.simulator.client import chat, get, post_chat, spec_validator
from tests.support import Simulator


async def test_key_reports_the_real_fields_and_the_simulators_limits(simulator: Simulator) -> None:
    await simulator.configure(free_per_minute=20, free_per_day=50)
    body = (await get(simulator, "key")).json()
    errors = [
        e.message
        for e in spec_validator(
            "/paths/~1key/get/responses/200/content/application~1json/schema"
        ).iter_errors(body)
    ]
    assert not errors, errors
    assert body["data"]["is_free_tier"] is True
    limits = body["data"]["simulator"]
    now = time.time()
    assert limits["free_per_minute"] == 20
    assert limits["free_window_seconds"] == 60
    assert limits["free_per_day"] == 50
    assert limits["speed"] == 1
    # At speed 1 the days are UTC days: today's began at the last midnight.
    assert limits["day_seconds"] == 86400
    assert limits["day_started_at"] == now // 86400 * 86400


async def test_speed_scales_the_minute_and_the_day_and_the_429_says_when_the_day_ends(
    simulator: Simulator,
) -> None:
    await simulator.configure(speed=10, free_per_minute=1000, free_per_day=2)
    limits = (await get(simulator, "key")).json()["data"]["simulator"]
    assert (limits["free_window_seconds"], limits["day_seconds"], limits["speed"]) == (6, 8640, 10)
    assert limits["day_started_at"] <= time.time() < limits["day_started_at"] + 8640
    assert limits["day_started_at"] % 8640 == 0
    assert [(await post_chat(simulator, chat("q", "sim/echo:free"))).status_code for _ in range(2)] == [
        200,
        200,
    ]
    limited = await post_chat(simulator, chat("q", "sim/echo:free"))
    assert limited.status_code == 429
    assert "free-models-per-day" in limited.json()["error"]["message"]
    assert int(limited.headers["X-RateLimit-Reset"]) == (limits["day_started_at"] + 8640) * 1000


async def test_a_call_refused_for_the_minute_still_counts_against_the_day(simulator: Simulator) -> None:
    await simulator.configure(free_per_minute=2, free_per_day=3)
    statuses = [(await post_chat(simulator, chat("q", "sim/echo:free"))).status_code for _ in range(4)]
    # The third is refused for the minute and spends the day's last attempt; the fourth meets the day's limit.
    assert statuses == [200, 200, 429, 429]
    refused = await post_chat(simulator, chat("q", "sim/echo:free"))
    assert "free-models-per-day" in refused.json()["error"]["message"]
    assert (await simulator.stats())["day_count"] == 3


async def test_an_explicit_window_or_day_overrides_the_speed(simulator: Simulator) -> None:
    await simulator.configure(speed=10, day_seconds=30)
    limits = (await get(simulator, "key")).json()["data"]["simulator"]
    assert (limits["free_window_seconds"], limits["day_seconds"]) == (6, 30)
    assert config_from_args(["--speed", "10", "--free-window-seconds", "2"]).free_window_seconds == 2
