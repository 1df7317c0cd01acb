"""Every failure ends: slow upstreams cost at most their attempts, cancels finish, outages pause and resume.

Each test does the damage for real against worker processes: an upstream that trickles keep-alive bytes, calls
that fail while their batch is cancelled, an OpenRouter that refuses connections for a while and comes back, a
run of 5xx across the fleet.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.simulator.netfaults import FaultProxy
from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("failures")]


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


def submit(env: dict[str, str], path: Path, *args: str) -> str:
    done = run_cli(env, "submit", str(path), "--json", *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def wait_until(check: Any, seconds: float, what: str) -> float:
    """Poll an async check until it is true; returns the monotonic time it became true."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic()


async def _outages_since(engine: AsyncEngine, since: datetime, count: int) -> bool:
    """Whether `count` calls started since `since` (Postgres's clock) have ended as outages."""
    started = await scalar(
        engine, "SELECT count(*) FROM attempt WHERE outcome = 'outage' AND started_at >= :since", since=since
    )
    return int(started) >= count


def _probed_twice(env: dict[str, str], batch: str) -> bool:
    """Whether `orbatch status` says the batch waits for an unreachable OpenRouter that the breaker has probed
    twice (`OpenRouter unreachable since HH:MM UTC (N probes; last: ...)`)."""
    waiting = str(orjson.loads(run_cli(env, "status", batch, "--json").stdout).get("waiting") or "")
    probes = re.match(r"OpenRouter unreachable since .*?\((\d+) probes?;", waiting)
    return probes is not None and int(probes[1]) >= 2


async def _calls_since(engine: AsyncEngine, since: datetime) -> list[tuple[float, str, str]]:
    """Each call started since `since`: seconds after it, its worker, its outcome (for a failure's message)."""
    found = await rows(
        engine,
        "SELECT extract(epoch FROM started_at - :since), worker, outcome FROM attempt"
        " WHERE started_at >= :since ORDER BY started_at",
        since=since,
    )
    return [(round(float(s), 2), str(w), str(o)) for s, w, o in found]


@pytest.mark.parametrize("sse", [False, True], ids=["whitespace", "sse-comments"])
async def test_a_trickling_upstream_costs_at_most_the_request_s_attempts(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path, sse: bool
) -> None:
    # One keep-alive byte every 0.3 s, for ever: a per-read timeout would never fire.
    await simulator.configure(rules=[{"match": "slow", "kind": "trickle", "interval": 0.3, "sse": sse}])
    env = {**env, "ORBATCH_REQUEST_TIMEOUT": "2"}
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("slow", "a slow question"), chat_line("ok", "fine")])
    batch = submit(env, path, "--models", "sim/echo", "--max-attempts", "2")
    started = time.monotonic()
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    # Two attempts of two seconds each and a short backoff, not arq's task timeout and not for ever.
    assert time.monotonic() - started < 25
    calls = [c for c in await simulator.calls() if "slow" in str(c["body"])]
    assert len(calls) == 2
    attempts = await rows(
        engine,
        "SELECT a.outcome, a.error_code, r.status FROM attempt a JOIN request r ON r.id = a.request_id"
        " WHERE r.custom_id = 'slow' ORDER BY a.number",
    )
    assert [tuple(a) for a in attempts] == [("retry", "timeout", "failed")] * 2
    assert await scalar(engine, "SELECT status FROM batch WHERE id = :b", b=batch) == "completed"


async def test_a_batch_cancelled_while_its_calls_fail_is_cancelled_once_they_end(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    # Long enough that `orbatch cancel` (a fresh process: about 2 s to start here) lands while they are in flight.
    await simulator.configure(rules=[{"match": "fail", "kind": "status", "status": 500, "delay": 4}])
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"fail {i}") for i in range(4)])
    batch = submit(env, path, "--models", "sim/echo")
    workers = Workers(env, tmp_path, 1, "--burst", "--concurrency", "4")

    async def four_in_flight() -> bool:
        return int((await simulator.stats())["in_flight"]) == 4

    await wait_until(four_in_flight, 30, "four calls in flight")
    cancelled = run_cli(env, "cancel", batch)
    assert cancelled.returncode == 0, cancelled.stderr

    async def calls_over() -> bool:
        return int((await simulator.stats())["in_flight"]) == 0

    async def batch_cancelled() -> bool:
        return await scalar(engine, "SELECT status FROM batch WHERE id = :b", b=batch) == "cancelled"

    last_call_ended = await wait_until(calls_over, 30, "the calls ended")
    done = await wait_until(batch_cancelled, 30, "the batch cancelled")
    assert done - last_call_ended < 2.5, f"cancelled {done - last_call_ended:.1f} s after its last call ended"
    assert await workers.wait(30) == [0]
    statuses = await rows(engine, "SELECT status, count(*) FROM request GROUP BY 1")
    assert [tuple(s) for s in statuses] == [("cancelled", 4)]
    # Each request was called once: its failed call did not put it back in the queue.
    assert len(await simulator.calls()) == 4


@pytest.fixture
async def upstream(simulator: Simulator) -> AsyncIterator[FaultProxy]:
    """The simulator behind a fault proxy that can refuse connections like an OpenRouter that is down."""
    host, port = simulator.root.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port))
    await proxy.start()
    yield proxy
    await proxy.stop()


def through(env: dict[str, str], proxy: FaultProxy, **extra: str) -> dict[str, str]:
    return {
        **env,
        "OPENROUTER_BASE_URL": f"http://127.0.0.1:{proxy.port}/api/v1",
        "ORBATCH_BREAKER_PROBE_BASE": "0.2",
        "ORBATCH_BREAKER_PROBE_MAX": "1",
        **extra,
    }


async def test_an_unreachable_openrouter_pauses_every_worker_and_they_resume_when_it_returns(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, upstream: FaultProxy, tmp_path: Path
) -> None:
    env = through(env, upstream, ORBATCH_MAX_ATTEMPTS="2")
    # The simulator passes for OpenRouter itself: workers that start while it is unreachable take their upstream
    # for OpenRouter (they cannot ask), and must find it so when it returns, as with the real one.
    await simulator.configure(identify=False)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"question {i}") for i in range(30)])
    # In a thread: the proxy runs on this test's event loop, which a blocking call would stop from forwarding.
    batch = await asyncio.to_thread(submit, env, path, "--models", "sim/echo")
    assert await scalar(engine, "SELECT simulated FROM batch") is False
    await upstream.down()
    workers = Workers(env, tmp_path, 2, "--burst", "--concurrency", "4")

    async def probed_a_few_times() -> bool:
        return int(await scalar(engine, "SELECT count(*) FROM attempt WHERE outcome = 'outage'")) >= 4

    await wait_until(probed_a_few_times, 30, "the outage noticed and probed")
    # Once the status says the breaker has probed twice, it calls one probe at a time. Five more calls into the
    # outage, each a chance to spend one of a request's two attempts: nothing fails, no attempt is spent. Calls
    # started before (the workers' first ones, which opened it) are not counted.
    await wait_until(lambda: asyncio.to_thread(_probed_twice, env, batch), 30, "the breaker open and probing")
    since = await scalar(engine, "SELECT clock_timestamp()")
    await wait_until(lambda: _outages_since(engine, since, 5), 60, "five probes of the outage")
    status = orjson.loads(run_cli(env, "status", batch, "--json").stdout)
    assert status["request_counts"]["failed"] == 0
    assert status["waiting"].startswith("OpenRouter unreachable since")
    assert await scalar(engine, "SELECT max(failures) FROM request") == 0
    assert await scalar(engine, "SELECT count(*) FROM attempt WHERE outcome NOT IN ('outage')") == 0
    probes, seconds = (
        await rows(
            engine,
            "SELECT count(*), extract(epoch FROM clock_timestamp() - :since) FROM attempt"
            " WHERE outcome = 'outage' AND started_at >= :since",
            since=since,
        )
    )[0]
    # One probe at a time at growing intervals (capped at 1 s here): about one a second, not a storm.
    allowed = int(seconds) + 2
    assert probes <= allowed, (probes, allowed, await _calls_since(engine, since))
    back = time.monotonic()
    await upstream.up()
    assert await workers.wait(60) == [0, 0], workers.output()[-3000:]
    recovered = time.monotonic() - back
    assert recovered < 10, f"the batch took {recovered:.1f} s to finish after OpenRouter came back"
    states = await rows(
        engine,
        "SELECT b.status, b.pause_reason, r.status, count(*) FROM request r JOIN batch b"
        " ON b.id = r.batch_id GROUP BY 1, 2, 3",
    )
    completed = await scalar(engine, "SELECT count(*) FROM request WHERE status = 'completed'")
    assert completed == 30, ([tuple(s) for s in states], workers.output()[-3000:])
    assert len(await simulator.calls()) == 30


async def test_a_run_of_5xx_across_requests_and_models_opens_the_breaker_and_is_survived(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {
        **env,
        "ORBATCH_BREAKER_PROBE_BASE": "0.2",
        "ORBATCH_BREAKER_PROBE_MAX": "1",
        "ORBATCH_MAX_ATTEMPTS": "3",
    }
    await simulator.configure(outage_status=503)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"question {i}") for i in range(20)])
    submit(env, path, "--models", "sim/echo,sim/backup,sim/spare,sim/last-resort")
    workers = Workers(env, tmp_path, 1, "--burst", "--concurrency", "4")

    async def breaker_open() -> bool:
        return int(await scalar(engine, "SELECT count(*) FROM attempt WHERE outcome = 'outage'")) >= 2

    await wait_until(breaker_open, 30, "the run of 503s open the breaker")
    # As many more calls into the outage as a request may make (three attempts here): none fails a request.
    since = await scalar(engine, "SELECT clock_timestamp()")
    await wait_until(lambda: _outages_since(engine, since, 3), 60, "three more calls into the outage")
    assert await scalar(engine, "SELECT count(*) FROM request WHERE status = 'failed'") == 0
    await simulator.configure(outage_status=None)
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    assert await scalar(engine, "SELECT count(*) FROM request WHERE status = 'completed'") == 20


async def test_a_5xx_that_names_its_provider_stays_that_request_s_failure(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(outage_status=503, outage_provider_name="SomeProvider")
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"question {i}") for i in range(6)])
    submit(
        {**env, "ORBATCH_MAX_ATTEMPTS": "2"}, path, "--models", "sim/echo,sim/backup", "--max-attempts", "2"
    )
    workers = Workers(env, tmp_path, 1, "--burst", "--concurrency", "3")
    assert await workers.wait(60) == [0]
    # No breaker: every request spent its own attempts moving down its chain, then failed.
    assert await scalar(engine, "SELECT count(*) FROM attempt WHERE outcome = 'outage'") == 0
    assert await scalar(engine, "SELECT count(*) FROM request WHERE status = 'failed'") == 6
    assert await scalar(engine, "SELECT count(*) FROM attempt") == 12
