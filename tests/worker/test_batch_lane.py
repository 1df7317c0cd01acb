"""The batch lane: requests through OpenRouter's Batch API (the simulator's) at half price, stored as calls are,
with what it fails, expires or refuses run live, and nothing paid twice across a worker's SIGKILL."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, until, write_jsonl

# Fleets of worker processes against the simulator's batches, some killed: with the other fleets, not beside them.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fleets")]

# Remote batches polled five times a second; a killed worker's lease lapses in 3 s; a lost create is sent again
# once it is 8 s old and found nowhere (its deadline, the request timeout, is 5 s).
LANE_ENV = {
    "ORBATCH_REMOTE_POLL_SECONDS": "0.2",
    "ORBATCH_REMOTE_LEASE_SECONDS": "3",
    "ORBATCH_REQUEST_TIMEOUT": "5",
    "ORBATCH_REMOTE_LOST_CREATE_SECONDS": "8",
}


def lines(n: int, text_of: str = "question {i}") -> list[dict[str, Any]]:
    return [chat_line(f"c{i}", text_of.format(i=i)) for i in range(n)]


def submit(env: dict[str, str], path: Path, *args: str) -> str:
    done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--json", *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def burst(env: dict[str, str], tmp_path: Path, seconds: float = 120) -> Workers:
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(seconds) == [0], workers.output()[-4000:]
    return workers


async def answered_once(engine: AsyncEngine, batch_id: str, n: int) -> None:
    """Every request completed with one result of its own text, one successful attempt each."""
    assert await scalar(engine, "SELECT status FROM batch WHERE id = :b", b=batch_id) == "completed"
    assert (
        await scalar(
            engine, "SELECT count(*) FROM request WHERE batch_id = :b AND status = 'completed'", b=batch_id
        )
        == n
    )
    assert (
        await scalar(
            engine,
            "SELECT count(*) FROM result s JOIN request q ON q.id = s.request_id WHERE q.batch_id = :b",
            b=batch_id,
        )
        == n
    )
    wrong = await scalar(
        engine,
        "SELECT count(*) FROM result s JOIN request q ON q.id = s.request_id WHERE q.batch_id = :b"
        " AND s.content <> 'echo: question ' || substr(q.custom_id, 2)",
        b=batch_id,
    )
    assert wrong == 0
    twice = await scalar(
        engine,
        "SELECT count(*) FROM (SELECT request_id FROM attempt WHERE batch_id = :b AND outcome = 'success'"
        " GROUP BY request_id HAVING count(*) > 1) t",
        b=batch_id,
    )
    assert twice == 0


def remote_lines(batches: list[dict[str, Any]]) -> Counter[str]:
    """How many remote batches each custom_id was sent in."""
    return Counter(line["custom_id"] for b in batches for line in b["lines"])


async def test_a_paid_batch_through_the_batch_lane_costs_half_of_the_same_batch_live(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    path = write_jsonl(tmp_path / "in.jsonl", lines(30))
    live = submit(env, path)
    batch = submit(env, path, "--lane", "batch")
    assert batch != live, "another lane is another batch"
    workers = await burst(env, tmp_path)
    await answered_once(engine, live, 30)
    await answered_once(engine, batch, 30)
    # The batch lane's requests went in one remote batch, each line once, none called live.
    remote = await simulator.batches()
    assert len(remote) == 1
    assert remote[0]["model"] == "sim/echo:batch"
    assert remote[0]["status"] == "completed"
    assert len(remote[0]["lines"]) == 30
    assert remote[0]["results_pages_fetched"] >= 1
    assert len(await simulator.calls()) == 30  # the live batch's calls only
    attempts = await rows(
        engine,
        "SELECT lane, remote_batch_id IS NOT NULL, model, generation_id LIKE 'gen-batch-%' FROM attempt WHERE batch_id = :b",
        b=batch,
    )
    assert {tuple(a) for a in attempts} == {("batch", True, "sim/echo:batch", True)}
    report = orjson.loads(run_cli(env, "usage", "--json").stdout)
    by_id = {b["id"]: b for b in report["batches"]}
    live_cost, batch_cost = Decimal(by_id[live]["cost"]), Decimal(by_id[batch]["cost"])
    assert live_cost > 0
    assert batch_cost * 2 == live_cost, (live_cost, batch_cost)
    assert [(r["model"], r["lane"], r["requests"]) for r in by_id[batch]["rows"]] == [
        ("sim/echo:batch", "batch", 30)
    ]
    assert [(r["model"], r["lane"], r["requests"]) for r in by_id[live]["rows"]] == [("sim/echo", "live", 30)]
    assert by_id[batch]["prompt_tokens"] == by_id[live]["prompt_tokens"]
    assert by_id[batch]["completion_tokens"] == by_id[live]["completion_tokens"]
    # The table says each row's lane, beside the model that served it.
    table = run_cli({**env, "COLUMNS": "250"}, "usage").stdout
    rows_shown = [line for line in table.splitlines() if "sim/echo" in line]
    assert any(" sim/echo:batch " in line and " batch " in line for line in rows_shown), table
    assert any(" sim/echo " in line and " live " in line for line in rows_shown), table
    assert "remote batch created" in workers.output()


async def test_a_batch_over_the_size_limits_is_split_with_the_body_in_the_documented_order(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    # 5,000 lines a batch would be slow here: the limit is made 7, and the simulator refuses an 8th line.
    env = {**env, **LANE_ENV, "ORBATCH_REMOTE_MAX_REQUESTS": "7"}
    await simulator.configure(batch_max_requests=7)
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(20)), "--lane", "batch")
    await burst(env, tmp_path)
    await answered_once(engine, batch, 20)
    remote = await simulator.batches()
    assert sorted(len(b["lines"]) for b in remote) == [6, 7, 7]
    assert all(b["status"] == "completed" for b in remote)
    assert set(remote_lines(remote).values()) == {1}
    # Each line is {custom_id, body} without a model: the batch's model is every line's.
    assert all(
        "model" not in line["body"] and "models" not in line["body"] for b in remote for line in b["lines"]
    )
    sizes = await rows(engine, "SELECT total, state FROM remote_batch ORDER BY id")
    assert [tuple(s) for s in sizes] == [(7, "done"), (7, "done"), (6, "done")]


async def test_a_size_limit_in_bytes_splits_too(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    # Lines of about 1.1 kB against a 4 kB limit: three lines a remote batch, and no body over it.
    env = {**env, **LANE_ENV, "ORBATCH_REMOTE_MAX_BYTES": "4096"}
    await simulator.configure(batch_max_bytes=4096)
    batch = submit(
        env, write_jsonl(tmp_path / "in.jsonl", lines(7, "question {i} " + "x" * 1000)), "--lane", "batch"
    )
    await burst(env, tmp_path)
    assert (
        await scalar(
            engine, "SELECT count(*) FROM request WHERE batch_id = :b AND status = 'completed'", b=batch
        )
        == 7
    )
    remote = await simulator.batches()
    assert sorted(len(b["lines"]) for b in remote) == [1, 3, 3]
    assert len(await simulator.calls()) == 0


async def test_a_sigkilled_worker_with_a_remote_batch_running_then_a_new_one_pays_nothing_twice(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV, "ORBATCH_REMOTE_MAX_REQUESTS": "25"}
    # Long enough in progress that the kill lands while the remote batches run.
    await simulator.configure(batch_in_progress_seconds=6)
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(60)), "--lane", "batch")
    first = Workers(env, tmp_path, 1)
    await until(
        lambda: scalar(engine, "SELECT count(*) FROM remote_batch WHERE state = 'running'"),
        "a remote batch running",
    )
    first.processes[0].send_signal(signal.SIGKILL)
    first.processes[0].wait()
    held = await rows(
        engine,
        "SELECT id, state, remote_id IS NOT NULL, lease_owner IS NOT NULL FROM remote_batch ORDER BY id",
    )
    assert any(r[1] == "running" for r in held), held
    second = Workers(env, tmp_path, 1, "--burst")
    assert await second.wait(120) == [0], second.output()[-4000:]
    await answered_once(engine, batch, 60)
    remote = await simulator.batches()
    # No remote batch created twice, no line sent twice, nothing called live.
    assert len(remote) == 3, [len(b["lines"]) for b in remote]
    counts = remote_lines(remote)
    assert len(counts) == 60
    assert set(counts.values()) == {1}
    assert len(await simulator.calls()) == 0
    assert await scalar(engine, "SELECT count(*) FROM attempt WHERE batch_id = :b", b=batch) == 60
    assert await scalar(engine, "SELECT count(DISTINCT remote_id) FROM remote_batch") == 3


async def test_a_sigkilled_worker_while_it_collects_the_lines_then_a_new_one_stores_each_once(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    # The first results page hangs past the call's deadline: the worker is killed while it collects.
    await simulator.configure(rules=[{"route": "batches.results", "kind": "hang", "seconds": 30, "times": 1}])
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(250)), "--lane", "batch")
    first = Workers(env, tmp_path, 1)
    await until(
        lambda: scalar(engine, "SELECT count(*) FROM remote_batch WHERE state = 'collecting'"),
        "the remote batch ended and its lines being read",
    )
    first.processes[0].send_signal(signal.SIGKILL)
    first.processes[0].wait()
    second = Workers(env, tmp_path, 1, "--burst")
    assert await second.wait(120) == [0], second.output()[-4000:]
    await answered_once(engine, batch, 250)
    remote = await simulator.batches()
    assert len(remote) == 1
    # Three pages of a hundred (the hung one given up), each line stored once, nothing called live.
    assert remote[0]["results_pages_fetched"] >= 3
    assert await scalar(engine, "SELECT count(*) FROM attempt WHERE batch_id = :b", b=batch) == 250
    assert await simulator.calls() == []


async def test_a_create_whose_answer_was_lost_is_found_by_listing_and_never_sent_again(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    await simulator.configure(batch_in_progress_seconds=4)
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(12)), "--lane", "batch")
    first = Workers(env, tmp_path, 1)
    await until(
        lambda: scalar(engine, "SELECT count(*) FROM remote_batch WHERE state = 'running'"),
        "the remote batch created",
    )
    first.processes[0].send_signal(signal.SIGKILL)
    first.processes[0].wait()
    # As if the worker had died after sending the create and before storing its answer.
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE remote_batch SET state = 'sending', remote_id = NULL, remote_status = NULL, lease_owner = NULL"
            )
        )
    second = Workers(env, tmp_path, 1, "--burst")
    assert await second.wait(120) == [0], second.output()[-4000:]
    await answered_once(engine, batch, 12)
    assert len(await simulator.batches()) == 1
    assert "lost remote batch create found again" in second.output()
    assert len(await simulator.calls()) == 0


async def test_a_create_that_never_took_effect_is_sent_again_once_its_wait_is_over(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    # The first create's connection is cut before the simulator stores it: unknown to the worker, not made.
    await simulator.configure(rules=[{"route": "batches.create", "kind": "reset", "times": 1}])
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(5)), "--lane", "batch")
    started = time.monotonic()
    workers = await burst(env, tmp_path)
    await answered_once(engine, batch, 5)
    assert len(await simulator.batches()) == 1
    assert "lost remote batch create not found on OpenRouter; sending it again" in workers.output()
    assert time.monotonic() - started >= 8  # not before the create's wait was over


async def test_lines_the_remote_batch_fails_go_live_and_complete(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(10)), "--lane", "batch")
    seventh = await scalar(engine, "SELECT id FROM request WHERE custom_id = 'c7'")
    await simulator.configure(
        rules=[
            # A failed line (`error`), and a line answered with an HTTP 500 (`response.status_code`): the
            # second names its line, so the live call that follows is not failed too.
            {"match": "question 3", "kind": "line_error", "message": "provider overloaded"},
            {"custom_id": f"r{seventh}", "kind": "status", "status": 500},
        ]
    )
    await burst(env, tmp_path)
    await answered_once(engine, batch, 10)
    calls = await simulator.calls()
    assert sorted(c["body"]["messages"][0]["content"] for c in calls) == ["question 3", "question 7"]
    failed = await rows(
        engine,
        "SELECT q.custom_id, a.lane, a.outcome FROM attempt a JOIN request q ON q.id = a.request_id"
        " WHERE a.outcome <> 'success' ORDER BY q.custom_id",
    )
    assert [tuple(f) for f in failed] == [("c3", "batch", "retry"), ("c7", "batch", "retry")]
    # Each spent one attempt, then a live call answered it.
    live = await rows(
        engine, "SELECT number, lane FROM attempt WHERE outcome = 'success' AND lane = 'live' ORDER BY id"
    )
    assert [tuple(r) for r in live] == [(2, "live"), (2, "live")]


async def test_an_expired_remote_batch_sends_what_it_left_live(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    await simulator.configure(batch_expire=True)
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(10)), "--lane", "batch")
    await burst(env, tmp_path)
    await answered_once(engine, batch, 10)
    remote = await simulator.batches()
    assert len(remote) == 1
    assert remote[0]["status"] == "expired"
    expired = [line["custom_id"] for line in remote[0]["lines"] if line["error"] == "batch_expired"]
    assert expired
    assert len(await simulator.calls()) == len(expired)
    by_lane = dict(
        tuple(r)
        for r in await rows(
            engine, "SELECT lane, count(*) FROM attempt WHERE outcome = 'success' GROUP BY lane"
        )
    )
    assert by_lane == {"batch": 10 - len(expired), "live": len(expired)}


async def test_a_key_without_the_batch_api_runs_the_whole_batch_live_and_says_so_once(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV, "ORBATCH_REMOTE_MAX_REQUESTS": "4"}
    await simulator.configure(batches_enabled=False)
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(10)), "--lane", "batch")
    workers = await burst(env, tmp_path)
    await answered_once(engine, batch, 10)
    assert len(await simulator.calls()) == 10
    output = workers.output()
    assert output.count("batch lane off: the batch runs live") == 1, output[-3000:]
    # One create tried, never again: the other remote batches formed were never sent.
    states = await rows(engine, "SELECT state, sent_at IS NOT NULL FROM remote_batch ORDER BY id")
    assert sum(1 for s in states if s[1]) == 1
    assert {s[0] for s in states} == {"refused"}
    status = orjson.loads(run_cli(env, "status", batch, "--json").stdout)
    assert status["lane"] == "batch"
    assert "not enabled for this key" in status["lane_note"]
    shown = run_cli({**env, "COLUMNS": "300"}, "status", batch).stdout
    assert "not enabled for this key" in shown


async def test_auto_sends_the_requests_with_a_batch_variant_to_the_batch_lane_and_the_rest_live(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    mixed = [
        chat_line(f"c{i}", f"question {i}", model="sim/echo" if i % 2 else "sim/spare") for i in range(10)
    ]
    done = run_cli(env, "submit", str(write_jsonl(tmp_path / "in.jsonl", mixed)), "--json", "--lane", "auto")
    assert done.returncode == 0, done.stderr
    batch = str(orjson.loads(done.stdout)["id"])
    await burst(env, tmp_path)
    lanes = await rows(
        engine,
        "SELECT q.custom_id, a.lane FROM attempt a JOIN request q ON q.id = a.request_id"
        " WHERE q.batch_id = :b AND a.outcome = 'success' ORDER BY q.id",
        b=batch,
    )
    assert [tuple(r) for r in lanes] == [(f"c{i}", "batch" if i % 2 else "live") for i in range(10)]
    calls = await simulator.calls()
    assert sorted(c["body"]["model"] for c in calls) == ["sim/spare"] * 5


@pytest.mark.parametrize("allowed", [True, False], ids=["cancel-allowed", "cancel-403"])
async def test_a_cancel_is_passed_on_to_the_remote_batch_and_a_refusal_is_tolerated(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path, allowed: bool
) -> None:
    env = {**env, **LANE_ENV}
    await simulator.configure(batch_in_progress_seconds=5, batch_cancel_allowed=allowed)
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(20)), "--lane", "batch")
    workers = Workers(env, tmp_path, 1, "--burst")
    await until(
        lambda: scalar(engine, "SELECT count(*) FROM remote_batch WHERE state = 'running'"),
        "the remote batch running",
    )
    cancelled = run_cli(env, "cancel", batch)
    assert cancelled.returncode == 0, cancelled.stderr
    assert await workers.wait(120) == [0], workers.output()[-4000:]
    assert await scalar(engine, "SELECT status FROM batch WHERE id = :b", b=batch) == "cancelled"
    remote = await simulator.batches()
    # (The simulator counts the cancels it took: a refused one is not among them.)
    assert len(remote) == 1
    assert remote[0]["cancel_requests"] == (1 if allowed else 0)
    counts = dict(
        tuple(r) for r in await rows(engine, "SELECT status, count(*) FROM request GROUP BY status")
    )
    assert len(await simulator.calls()) == 0
    if allowed:
        assert remote[0]["status"] == "cancelled"
        # What it answered before the cancel is billed but shows no result rows: those requests are cancelled.
        assert counts == {"cancelled": 20}
    else:
        # Refused: it ran to its end, and what it answered is stored, as it is paid.
        assert remote[0]["status"] == "completed"
        assert counts == {"completed": 20}
        assert workers.output().count("remote batch cancel refused") == 1
        assert await scalar(engine, "SELECT cancel_refused FROM remote_batch") is True


async def test_status_counts_the_requests_waiting_in_a_remote_batch(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    # Long enough in progress for two commands to read it there.
    await simulator.configure(batch_in_progress_seconds=10)
    batch = submit(env, write_jsonl(tmp_path / "in.jsonl", lines(8)), "--lane", "batch")
    workers = Workers(env, tmp_path, 1, "--burst")
    await until(
        lambda: scalar(engine, "SELECT count(*) FROM remote_batch WHERE state = 'running'"),
        "the remote batch running",
    )
    status = orjson.loads(run_cli(env, "status", batch, "--json").stdout)
    assert status["request_counts"]["remote"] == 8
    shown = run_cli({**env, "COLUMNS": "200"}, "status", batch).stdout
    assert "8 in remote batches" in shown, shown
    assert await workers.wait(120) == [0], workers.output()[-4000:]
    await asyncio.sleep(0)


async def test_orbatch_run_with_the_batch_lane_writes_every_answer_from_the_remote_batch(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    path = write_jsonl(tmp_path / "in.jsonl", lines(6))
    out = tmp_path / "out.jsonl"
    done = run_cli(env, "run", str(path), "-o", str(out), "--models", "sim/echo", "--lane", "batch")
    assert done.returncode == 0, done.stderr
    answers = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [a["custom_id"] for a in answers] == [f"c{i}" for i in range(6)]
    assert all(a["response"]["body"]["model"] == "sim/echo:batch" for a in answers)
    assert len(await simulator.batches()) == 1
    assert await simulator.calls() == []


async def test_an_embeddings_file_goes_through_the_batch_lane_at_half_the_live_price(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, **LANE_ENV}
    vectors = [{"custom_id": f"v{i}", "input": [f"text {i}", f"title {i}"]} for i in range(4)]
    path = write_jsonl(tmp_path / "vectors.jsonl", vectors)
    live = run_cli(env, "run", str(path), "-o", str(tmp_path / "live.jsonl"), "--models", "sim/embed")
    assert live.returncode == 0, live.stderr
    done = run_cli(
        env, "run", str(path), "-o", str(tmp_path / "out.jsonl"), "--models", "sim/embed", "--lane", "batch"
    )
    assert done.returncode == 0, done.stderr
    [remote] = await simulator.batches()
    assert (remote["endpoint"], remote["model"]) == ("/v1/embeddings", "sim/embed:batch")
    answers = {
        a["custom_id"]: a for a in map(orjson.loads, (tmp_path / "out.jsonl").read_bytes().splitlines())
    }
    assert set(answers) == {f"v{i}" for i in range(4)}
    assert all([d["index"] for d in a["response"]["body"]["data"]] == [0, 1] for a in answers.values())
    # Only the first run called live; the same vectors came back at half its price.
    assert len(await simulator.calls()) == 4
    costs = {
        lane: cost for lane, cost in await rows(engine, "SELECT lane, sum(cost) FROM attempt GROUP BY lane")
    }
    assert costs["live"] == 2 * costs["batch"] > 0
