"""The task's writes: each call recorded once, its cost counted once, its batch updated once, whatever breaks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.states import Outcome, PauseReason, RequestStatus
from jobs.scheduling import feeder
from jobs.scheduling.queue import job_id
from jobs.simulator.netfaults import postgres_proxy
from jobs.submission.submit import SubmitOptions, submit_file
from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl
from worker import records
from worker.classify import Failure, Usage
from worker.retry import Decision


async def one(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).one()


def submit(env: dict[str, str], path: Path, *args: str) -> str:
    done = run_cli(env, "submit", str(path), "--json", *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def tallies_match_the_rows(engine: AsyncEngine) -> None:
    tally = await one(
        engine, "SELECT coalesce(sum(cost), 0) AS cost, coalesce(sum(calls), 0) AS calls FROM batch_tally"
    )
    rows = await one(
        engine,
        "SELECT coalesce(sum(cost), 0) AS cost, count(*) AS calls FROM attempt"
        " WHERE outcome NOT IN ('in_flight', 'reused')",
    )
    assert (Decimal(tally.cost), int(tally.calls)) == (Decimal(rows.cost), int(rows.calls))


@pytest.mark.slow
async def test_an_answer_whose_commit_reply_is_lost_is_stored_and_paid_once(
    env: dict[str, str], database_url: str, engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    marker = f"lost-commit-{uuid.uuid4().hex[:8]}"
    batch = submit(
        env,
        write_jsonl(tmp_path / "in.jsonl", [chat_line("a", f"{marker} question"), chat_line("b", "other")]),
        "--models",
        "sim/echo",
        "--max-cost",
        "100",
    )
    proxy, through = await postgres_proxy(database_url)
    try:
        # The statement that stores the answer (its body carries the marker) commits; its reply never arrives.
        proxy.drop_reply_after(marker.encode())
        workers = Workers({**env, "DATABASE_URL": through}, tmp_path, 1, "--burst")
        assert await workers.wait(60) == [0], workers.output()[-3000:]
    finally:
        await proxy.stop()
    assert proxy.dropped == 1
    stored = await one(
        engine,
        "SELECT count(*) AS results, (SELECT count(*) FROM attempt) AS attempts,"
        " (SELECT spent FROM batch WHERE id = :b) AS spent, (SELECT sum(cost) FROM attempt) AS cost FROM result",
        b=batch,
    )
    assert (stored.results, stored.attempts) == (2, 2)
    assert stored.spent == stored.cost > 0
    assert len(await simulator.calls()) == 2
    await tallies_match_the_rows(engine)


@pytest.mark.slow
async def test_a_failure_whose_commit_reply_is_lost_moves_its_request_once(
    env: dict[str, str], database_url: str, engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    marker = f"lost-failure-{uuid.uuid4().hex[:8]}"
    await simulator.configure(
        rules=[{"match": "boom", "kind": "status", "status": 500, "message": marker, "times": 1}]
    )
    submit(env, write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "boom")]), "--models", "sim/echo")
    proxy, through = await postgres_proxy(database_url)
    try:
        proxy.drop_reply_after(marker.encode())
        workers = Workers({**env, "DATABASE_URL": through}, tmp_path, 1, "--burst")
        assert await workers.wait(60) == [0], workers.output()[-3000:]
    finally:
        await proxy.stop()
    assert proxy.dropped == 1
    request = await one(engine, "SELECT status, failures, attempts FROM request")
    # One failed call and one answer: the failure counted once, though its statement ran twice.
    assert tuple(request) == ("completed", 1, 2)
    await tallies_match_the_rows(engine)


async def leased(engine: AsyncEngine, tmp_path: Path, **options: Any) -> records.Attempt:
    path = write_jsonl(tmp_path / f"{uuid.uuid4().hex}.jsonl", [chat_line("a", "x")])
    report = await submit_file(
        engine, path, SubmitOptions(**{"models": ["sim/echo"], "new": True, **options})
    )
    async with engine.connect() as conn:
        request_id = (
            await conn.execute(text("SELECT id FROM request WHERE batch_id = :b"), {"b": report.batch_id})
        ).scalar_one()
    attempt = await records.take_lease(
        engine, request_id, 0, "me", 30, simulated=options.get("simulated", False)
    )
    assert attempt is not None
    return attempt


async def test_a_paid_call_that_parks_its_batch_both_spends_and_pauses(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    attempt = await leased(engine, tmp_path, max_cost=Decimal("5"))
    failure = Failure(
        Outcome.PARK,
        "402",
        "no credits",
        402,
        park_reason=PauseReason.CREDITS,
        usage=Usage(prompt_tokens=3, completion_tokens=0, cost=Decimal("0.25")),
    )
    decision = Decision(RequestStatus.PENDING, 0, 0, 0.0)
    record = await attempt.fail(failure, decision, datetime.now(UTC), 10)
    assert record.paused == "credits"
    batch_id = attempt.lease.batch_id
    batch = await one(engine, "SELECT status, pause_reason, spent FROM batch WHERE id = :b", b=batch_id)
    assert tuple(batch) == ("paused", "credits", Decimal("0.25"))
    # Run again (a retry after a lost reply): nothing moves twice.
    again = await attempt.fail(failure, decision, datetime.now(UTC), 10)
    assert (again.recorded, again.moved, again.paused) == (False, False, None)
    assert (await one(engine, "SELECT spent FROM batch WHERE id = :b", b=batch_id)).spent == Decimal("0.25")


async def test_free_calls_are_counted_by_the_day_they_were_made_not_reused_answers_nor_other_batches(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    real = await leased(engine, tmp_path, models=["sim/echo:free"])
    simulated = await leased(engine, tmp_path, models=["sim/echo:free"], simulated=True)
    for attempt in (real, simulated):
        failure = Failure(Outcome.RETRY, "http_500", "boom", 500)
        await attempt.fail(failure, Decision(RequestStatus.PENDING, 1, 0, 0.0), since, 5)
    # An answer reused from another request made no call.
    reused = await leased(engine, tmp_path, models=["sim/echo:free"])
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE attempt SET outcome = 'reused' WHERE id = :a"), {"a": reused.lease.attempt_id}
        )
    assert await records.free_calls_since(engine, since, simulated=False) == 1
    assert await records.free_calls_since(engine, since, simulated=True) == 1
    assert (
        await records.free_calls_since(engine, datetime.now(UTC) + timedelta(minutes=1), simulated=False) == 0
    )


async def queued(redis: ArqRedis, queue_name: str) -> list[str]:
    return [j.decode() for j in await redis.zrange(queue_name, 0, -1)]


async def test_a_request_given_back_before_the_feeder_marks_it_queued_is_fed_again_at_once(
    engine: AsyncEngine, redis: ArqRedis, queue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await submit_file(
        engine, write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")]), SubmitOptions(models=["sim/echo"])
    )
    enqueue = feeder.enqueue_requests

    async def taken_and_given_back_at_once(
        pool: ArqRedis, queue: str, requests: list[tuple[int, int, int]], scores: list[float] | None = None
    ) -> list[int]:
        outcomes = await enqueue(pool, queue, requests, scores)
        # Between the feeder's enqueue and its mark, a worker runs the job: the outage breaker denies it a
        # permit, so it gives the request back unsent, and arq finishes the job.
        [(request_id, attempts, feeds)] = requests
        attempt = await records.take_lease(engine, request_id, attempts, "me", 30, simulated=False)
        assert attempt is not None
        await attempt.give_back(0.0)
        await pool.zrem(queue, job_id(request_id, attempts, feeds))
        await pool.delete(job_key_prefix + job_id(request_id, attempts, feeds))
        return outcomes

    monkeypatch.setattr(feeder, "enqueue_requests", taken_and_given_back_at_once)
    assert (await feeder.feed(engine, redis, queue_name, window=10)).enqueued == 1
    monkeypatch.undo()
    # The request is not marked queued for a job that is gone, which only the requeue sweep would undo.
    assert (await feeder.feed(engine, redis, queue_name, window=10)).enqueued == 1
    assert await queued(redis, queue_name) == ["r1.0.1"]


async def test_a_request_given_back_unsent_is_fed_under_a_new_job_id_while_its_job_finishes(
    engine: AsyncEngine, redis: ArqRedis, queue_name: str, tmp_path: Path
) -> None:
    await submit_file(
        engine, write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")]), SubmitOptions(models=["sim/echo"])
    )
    await feeder.feed(engine, redis, queue_name, window=10)
    # A worker claims the job (arq's in-progress key), finds the breaker open and gives the request back.
    await redis.set(in_progress_key_prefix + "r1.0", b"1", px=600_000)
    attempt = await records.take_lease(engine, 1, 0, "me", 30, simulated=False)
    assert attempt is not None
    await attempt.give_back(0.0)
    # Its job still runs; the next attempt's job must not wait for that one's keys to go.
    assert (await feeder.feed(engine, redis, queue_name, window=10)).enqueued == 1
    assert sorted(await queued(redis, queue_name)) == ["r1.0", "r1.0.1"]
    attempt = await records.take_lease(engine, 1, 0, "me", 30, simulated=False)
    assert attempt is not None
    assert attempt.lease.number == 1


async def test_a_worker_takes_only_the_batches_of_its_own_kind_of_upstream(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # A real batch answered by the simulator would keep its echoes as results (and a later real run would carry
    # on with them); a simulated batch sent to OpenRouter would be paid for.
    for simulated in (False, True):
        path = write_jsonl(tmp_path / f"{simulated}.jsonl", [chat_line("a", "x")])
        report = await submit_file(
            engine, path, SubmitOptions(models=["sim/echo"], new=True, simulated=simulated)
        )
        async with engine.connect() as conn:
            request_id = (
                await conn.execute(text("SELECT id FROM request WHERE batch_id = :b"), {"b": report.batch_id})
            ).scalar_one()
        assert await records.take_lease(engine, request_id, 0, "me", 30, simulated=not simulated) is None
        attempt = await records.take_lease(engine, request_id, 0, "me", 30, simulated=simulated)
        assert attempt is not None
