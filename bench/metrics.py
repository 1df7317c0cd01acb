"""Benchmark: what one scrape of /metrics costs as the queue and the fleet grow, against one bare Redis round trip.

A scrape renders the process's own counters and reads the fleet's gauges from Redis (two round trips: sorted-set
counts and small keys, then the heartbeats); it never touches Postgres, so the size of a batch in the database
does not enter. Measured here: `jobs.observation.exposition.render_metrics` with 0, 1,000 and 1,000,000 jobs in the arq
queue (the feeder keeps at most ORBATCH_FEED_WINDOW, 1,000, per batch there: a million is a thousand batches
running at once) and 1, 10 and 100 live workers, beside a bare PING.

    uv run python bench/metrics.py [--scrapes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REDIS_URL, machine

QUEUE = "orbatch-bench-metrics"


async def _fill(redis: object, jobs: int, workers: int) -> None:
    from redis.asyncio import Redis

    from jobs.scheduling.roster import Heartbeat, write_heartbeat

    assert isinstance(redis, Redis)
    await redis.flushdb()
    now_ms = int(time.time() * 1000)
    chunk = 10_000
    for start in range(0, jobs, chunk):
        await redis.zadd(QUEUE, {f"r{i}.0": now_ms for i in range(start, min(jobs, start + chunk))})
    now = datetime.now(UTC)
    for i in range(workers):
        beat = Heartbeat(
            id=f"host-{i}:{i}:bench",
            host=f"host-{i}",
            pid=i,
            version="bench",
            queue=QUEUE,
            concurrency=16,
            in_flight=8,
            tasks=12,
            answered=1000,
            started_at=now,
            last_activity=now,
            beat_at=now,
        )
        await write_heartbeat(redis, QUEUE, beat, 600)


async def _time(scrapes: int, jobs: int, workers: int) -> tuple[float, float, float, int]:
    """Median and p99 ms of a scrape, median ms of a PING, and the size of the answer."""
    from redis.asyncio import Redis

    from jobs.core.settings import Settings
    from jobs.observation.exposition import render_metrics

    settings = Settings(queue_name=QUEUE)
    redis = Redis.from_url(REDIS_URL)
    try:
        await _fill(redis, jobs, workers)
        body = await render_metrics(redis, settings)
        renders, pings = [], []
        for _ in range(scrapes):
            started = time.perf_counter()
            await render_metrics(redis, settings)
            renders.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await redis.ping()
            pings.append((time.perf_counter() - started) * 1000)
        await redis.flushdb()
    finally:
        await redis.aclose()
    renders.sort()
    return (
        statistics.median(renders),
        renders[int(len(renders) * 0.99) - 1],
        statistics.median(pings),
        len(body),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    print(machine())
    print("| jobs queued | live workers | scrape median ms | scrape p99 ms | bare PING ms | bytes |")
    print("|---|---|---|---|---|---|")
    for jobs, workers in ((0, 1), (1_000, 10), (1_000_000, 100)):
        median, p99, ping, size = asyncio.run(_time(args.scrapes, jobs, workers))
        print(f"| {jobs:,} | {workers} | {median:.2f} | {p99:.2f} | {ping:.3f} | {size:,} |")


if __name__ == "__main__":
    main()
