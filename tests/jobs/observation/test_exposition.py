"""What any process's /metrics says of the fleet, read from Redis alone at scrape time, and who may read it."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from jobs.core.constants import THROTTLE_KEY
from jobs.core.settings import Settings
from jobs.core.states import BatchPriority
from jobs.observation.exposition import metrics_authorized, render_metrics
from jobs.observation.metrics import OTHER_MODEL, ModelLabels
from jobs.scheduling.fairness import TIER_BASE
from jobs.scheduling.fleet import breaker_key, limits_key
from jobs.scheduling.queue import enqueue_requests
from jobs.scheduling.roster import Heartbeat, write_heartbeat

Readings = dict[str, dict[frozenset[tuple[str, str]], float]]


def readings(body: bytes) -> Readings:
    found: Readings = defaultdict(dict)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[sample.name][frozenset(sample.labels.items())] = sample.value
    return found


def one(found: Readings, name: str, **labels: str) -> float:
    return found[name][frozenset(labels.items())]


def beat(worker: str, concurrency: int) -> Heartbeat:
    now = datetime.now(UTC)
    return Heartbeat(
        id=f"{worker}:1:x",
        host=worker,
        pid=1,
        version="0.1.0",
        queue="q",
        concurrency=concurrency,
        in_flight=0,
        tasks=0,
        answered=0,
        started_at=now,
        last_activity=None,
        beat_at=now,
    )


async def test_the_fleets_gauges_come_from_redis_alone(redis: ArqRedis, queue_name: str) -> None:
    # No database anywhere: the settings point at none that exists, and nothing here opens one.
    settings = Settings(queue_name=queue_name, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    await write_heartbeat(redis, queue_name, beat("a", 16), 30)
    await write_heartbeat(redis, queue_name, beat("b", 8), 30)
    await enqueue_requests(redis, queue_name, [(i, 0, 0) for i in range(1, 8)])
    await redis.zadd(queue_name, {"later": time.time() * 1000 + 3_600_000})
    # The simulated batches' queue beside it: one urgent and two background jobs, in the fair order's tiers.
    simulated = f"{queue_name}:sim"
    urgent, background = TIER_BASE[BatchPriority.URGENT], TIER_BASE[BatchPriority.BACKGROUND]
    await enqueue_requests(
        redis, simulated, [(11, 0, 0), (12, 0, 0), (13, 0, 0)], [urgent + 1, background + 1, background + 2]
    )
    await redis.hset(
        limits_key(queue_name),
        mapping={
            "free_per_day": 1000,
            "day_seconds": 86400,
            "free_per_window": 20,
            "window_seconds": 60,
            "margin": 0.05,
        },
    )
    today = int(time.time() // 86400)
    await redis.set(THROTTLE_KEY.format(queue=queue_name, name="free-day"), f"{today}:380")
    now_ms = int(time.time() * 1000)
    await redis.hset(breaker_key(queue_name), mapping={"since": now_ms, "probes": 3, "reason": "refused"})
    await redis.set(THROTTLE_KEY.format(queue=queue_name, name="cooldown:free"), now_ms + 20_000)
    await redis.zadd(THROTTLE_KEY.format(queue=queue_name, name="in-flight"), {"p1": now_ms + 60_000})

    found = readings(await render_metrics(redis, settings))

    assert one(found, "orbatch_redis_up") == 1
    assert one(found, "orbatch_queue_depth") == 10
    assert one(found, "orbatch_queue_deferred") == 1
    # By kind of upstream and priority (jobs queued without a fair order's score count as unordered).
    assert one(found, "orbatch_queue_jobs", account="openrouter", priority="unordered") == 7
    assert one(found, "orbatch_queue_jobs", account="openrouter", priority="normal") == 0
    assert one(found, "orbatch_queue_jobs", account="simulator", priority="urgent") == 1
    assert one(found, "orbatch_queue_jobs", account="simulator", priority="background") == 2
    assert one(found, "orbatch_workers_alive") == 2
    assert one(found, "orbatch_fleet_concurrency") == 24
    assert one(found, "orbatch_free_requests_per_day", account="openrouter") == 1000
    assert one(found, "orbatch_free_requests_used_today", account="openrouter") == 380
    assert one(found, "orbatch_free_requests_left_today", account="openrouter") == 620
    assert one(found, "orbatch_free_day_end_timestamp_seconds", account="openrouter") == (today + 1) * 86400
    assert one(found, "orbatch_free_pace_seconds", account="openrouter") == pytest.approx(
        3.15
    )  # 60 s / 20 + 5 %
    assert one(found, "orbatch_breaker_open", account="openrouter") == 1
    assert one(found, "orbatch_breaker_failed_probes", account="openrouter") == 3
    assert 15 < one(found, "orbatch_cooldown_seconds", account="openrouter", tier="free") <= 20
    assert one(found, "orbatch_cooldown_seconds", account="openrouter", tier="paid") == 0
    assert one(found, "orbatch_fleet_calls_in_flight", account="openrouter") == 1
    # No worker runs against the simulator: its account is not shown.
    assert frozenset({("account", "simulator")}) not in found["orbatch_free_requests_per_day"]
    # The process's own metrics come first, whatever process renders them (here: no worker at all).
    assert "orbatch_build_info" in found


async def test_before_any_worker_started_the_free_tier_is_the_settings_and_yesterdays_count_is_not_today(
    redis: ArqRedis, queue_name: str
) -> None:
    settings = Settings(queue_name=queue_name)
    yesterday = int(time.time() // 86400) - 1
    await redis.set(THROTTLE_KEY.format(queue=queue_name, name="free-day"), f"{yesterday}:50")
    found = readings(await render_metrics(redis, settings))
    assert one(found, "orbatch_free_requests_per_day", account="openrouter") == 50
    assert one(found, "orbatch_free_requests_left_today", account="openrouter") == 50
    assert one(found, "orbatch_workers_alive") == 0
    assert one(found, "orbatch_breaker_open", account="openrouter") == 0


async def test_an_unreachable_redis_leaves_the_processs_own_metrics_and_says_so() -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        started = time.monotonic()
        found = readings(await render_metrics(unreachable, Settings()))
    finally:
        await unreachable.aclose()
    assert time.monotonic() - started < 5
    assert one(found, "orbatch_redis_up") == 0
    assert "orbatch_queue_depth" not in found
    assert "orbatch_build_info" in found


def test_metrics_are_open_without_a_token_and_need_it_as_a_bearer_with_one() -> None:
    open_ = Settings()
    assert metrics_authorized(open_, None)
    assert metrics_authorized(open_, "Bearer anything")
    guarded = Settings(metrics_token="s3cret")
    assert metrics_authorized(guarded, "Bearer s3cret")
    assert metrics_authorized(guarded, "bearer  s3cret ")
    assert not metrics_authorized(guarded, None)
    assert not metrics_authorized(guarded, "")
    assert not metrics_authorized(guarded, "s3cret")
    assert not metrics_authorized(guarded, "Basic s3cret")
    assert not metrics_authorized(guarded, "Bearer s3cre")


def test_model_labels_are_catalogue_ids_and_at_most_a_bounded_number() -> None:
    labels = ModelLabels(limit=2)
    assert labels.decided("a/one") is None  # not yet asked of the catalogue
    assert labels.label("a/one", listed=True) == "a/one"
    assert labels.decided("a/one") == "a/one"
    assert labels.label("made-up", listed=False) == OTHER_MODEL
    assert labels.decided("made-up") == OTHER_MODEL  # not asked again at once
    assert labels.label("a/two", listed=True) == "a/two"
    # The cap reached, even a listed model is `other`.
    assert labels.decided("a/three") == OTHER_MODEL
    assert labels.label("a/three", listed=True) == OTHER_MODEL
    assert labels.decided(None) == OTHER_MODEL
