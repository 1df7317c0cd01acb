"""Prometheus metrics: a worker's /metrics moves as its batch does, with bounded labels, behind an optional token."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl

pytestmark = pytest.mark.slow

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]

# Every label a metric may carry; a batch, request or custom id is none of them.
LABELS = {"result", "outcome", "model", "status", "kind", "tier", "account", "priority", "le", "version"}
STATUS = re.compile(r"\d{3}|timeout|connect_timeout|connection_error|none")


async def metrics_port(workers: Workers, seconds: float = 60) -> int:
    """The port a worker started with `--metrics-port 0` says it listens on."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in workers.output().splitlines():
            if '"metrics served"' in line:
                return int(orjson.loads(line)["port"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"the worker never served metrics:\n{workers.output()[-3000:]}")


async def scrape(port: int, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}/metrics", headers=headers)


def samples(body: str) -> Samples:
    """Every sample by name and label set."""
    found: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for key, v in found.get(name, {}).items() if wanted <= set(key))


async def scalar(engine: AsyncEngine, sql: str) -> object:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


async def test_a_workers_metrics_move_as_its_batch_does_and_no_label_names_a_batch_or_request(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=150)
    total = 120
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"item-{i}", f"question {i}") for i in range(total)])
    workers = Workers(env, tmp_path, 1, "--concurrency", "4", "--metrics-port", "0")
    try:
        port = await metrics_port(workers)
        before = samples((await scrape(port)).text)
        assert value(before, "orbatch_requests_finished_total") == 0
        assert value(before, "orbatch_workers_alive") == 1
        assert value(before, "orbatch_worker_concurrency") == 4
        assert value(before, "orbatch_redis_up") == 1

        submitted = run_cli(env, "submit", str(path), "--models", "sim/echo", "--json")
        assert submitted.returncode == 0, submitted.stderr
        batch_id = orjson.loads(submitted.stdout)["id"]

        readings: list[Samples] = []
        deadline = time.monotonic() + 120
        while True:
            response = await scrape(port)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            readings.append(samples(response.text))
            if value(readings[-1], "orbatch_requests_finished_total") >= total:
                break
            assert time.monotonic() < deadline, workers.output()[-3000:]
            await asyncio.sleep(0.25)
        after = readings[-1]
    finally:
        workers.processes[0].send_signal(signal.SIGTERM)
        await workers.wait(60)

    finished = [value(r, "orbatch_requests_finished_total") for r in readings]
    # Seen moving during the batch, never backwards.
    assert any(0 < n < total for n in finished), finished
    assert finished == sorted(finished)
    assert any(value(r, "orbatch_queue_depth") > 0 for r in readings)
    assert any(value(r, "orbatch_calls_in_flight") > 0 for r in readings)
    assert any(value(r, "orbatch_fleet_calls_in_flight") > 0 for r in readings)

    # At the end the counters say what Postgres says.
    assert value(after, "orbatch_requests_finished_total", outcome="completed") == total
    assert value(after, "orbatch_tasks_total", result="completed") == total
    assert value(after, "orbatch_upstream_calls_total", model="sim/echo", status="200") == total
    assert value(after, "orbatch_call_duration_seconds_count", model="sim/echo") == total
    # Every call took the simulator's 150 ms at least, none of them a minute.
    assert value(after, "orbatch_call_duration_seconds_bucket", model="sim/echo", le="0.1") == 0
    assert value(after, "orbatch_call_duration_seconds_bucket", model="sim/echo", le="60.0") == total
    assert value(after, "orbatch_throttle_wait_seconds_count", tier="paid") == total
    prompt = await scalar(engine, "SELECT sum(prompt_tokens) FROM attempt")
    assert value(after, "orbatch_tokens_total", model="sim/echo", kind="prompt") == prompt
    cost = await scalar(engine, "SELECT sum(cost) FROM attempt")
    assert isinstance(cost, Decimal)
    assert cost > 0
    assert value(after, "orbatch_cost_usd_total", model="sim/echo") == pytest.approx(float(cost))
    assert value(after, "orbatch_calls_in_flight") == 0

    # Labels are bounded: no batch, request or custom id anywhere, models from the catalogue, statuses.
    for reading in readings:
        for name, series in reading.items():
            for key in series:
                labels = dict(key)
                assert set(labels) <= LABELS, (name, labels)
                for label in labels.values():
                    assert batch_id not in label, (name, labels)
                    assert "item-" not in label, (name, labels)
                if "model" in labels:
                    assert labels["model"] in {"sim/echo", "other"}, (name, labels)
                if "status" in labels:
                    assert STATUS.fullmatch(labels["status"]), (name, labels)


async def test_429s_are_counted_by_their_kind(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.reset(
        rules=[
            {
                "match": "minute",
                "status": 429,
                "times": 1,
                "message": "Rate limit exceeded: free-models-per-min. ",
                "reset_in_seconds": 0.2,
            },
            {
                "match": "provider",
                "status": 429,
                "times": 1,
                "message": "Provider returned error",
                "metadata": {"provider_name": "SomeProvider"},
            },
        ]
    )
    lines = [chat_line("a", "a free minute limit"), chat_line("b", "a provider's own limit")]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    assert run_cli(env, "submit", str(path), "--models", "sim/echo,sim/backup").returncode == 0
    workers = Workers(env, tmp_path, 1, "--metrics-port", "0")
    try:
        port = await metrics_port(workers)
        deadline = time.monotonic() + 60
        while value(found := samples((await scrape(port)).text), "orbatch_requests_finished_total") < 2:
            assert time.monotonic() < deadline, workers.output()[-3000:]
            await asyncio.sleep(0.2)
    finally:
        workers.kill()
    assert value(found, "orbatch_rate_limited_total", kind="free_per_minute") == 1
    assert value(found, "orbatch_rate_limited_total", kind="provider") == 1
    assert value(found, "orbatch_upstream_calls_total", status="429") == 2
    assert value(found, "orbatch_requests_finished_total", outcome="completed") == 2


async def test_metrics_need_the_bearer_token_when_one_is_set(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "ORBATCH_METRICS_TOKEN": "scrape-secret"}
    workers = Workers(env, tmp_path, 1, "--metrics-port", "0")
    try:
        port = await metrics_port(workers)
        refused = await scrape(port)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "orbatch_" not in refused.text
        assert (await scrape(port, "wrong")).status_code == 401
        allowed = await scrape(port, "scrape-secret")
        assert allowed.status_code == 200
        assert "orbatch_workers_alive 1.0" in allowed.text
    finally:
        workers.kill()


async def test_a_taken_metrics_port_stops_the_worker_with_a_message_naming_the_setting(
    env: dict[str, str], redis: ArqRedis, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - the worker binds every interface; so must the squatter
        taken.listen()
        port = taken.getsockname()[1]
        workers = Workers({**env, "ORBATCH_METRICS_PORT": str(port)}, tmp_path, 1, "--burst")
        assert await workers.wait(60) == [2]
    assert "ORBATCH_METRICS_PORT" in workers.output()
    assert f"{port}" in workers.output()
