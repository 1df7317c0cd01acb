"""The whole path with real processes: CLI submit, arq workers, the simulator over HTTP, Postgres, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.scheduling.queue import enqueue_requests
from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl


def submit(env: dict[str, str], path: Path, *args: str) -> dict[str, Any]:
    done = run_cli(env, "submit", str(path), "--json", *args)
    assert done.returncode == 0, done.stderr
    return dict(orjson.loads(done.stdout))


async def run_workers(
    env: dict[str, str], tmp_path: Path, count: int = 1, concurrency: int = 8, seconds: float = 120
) -> Workers:
    workers = Workers(env, tmp_path, count, "--burst", "--concurrency", str(concurrency))
    codes = await workers.wait(seconds)
    assert codes == [0] * count, workers.output()[-4000:]
    return workers


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def test_500_requests_through_two_worker_processes_each_answer_on_its_own_line(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=5)
    path = write_jsonl(
        tmp_path / "in.jsonl", (chat_line(f"item-{i}", f"question number {i}") for i in range(500))
    )
    batch = submit(env, path, "--models", "sim/echo", "--name", "five-hundred")
    assert batch["request_counts"]["total"] == 500

    await run_workers(env, tmp_path, count=2, concurrency=16)

    status = orjson.loads(run_cli(env, "status", batch["id"], "--json").stdout)
    assert status["status"] == "completed"
    assert status["request_counts"]["completed"] == 500
    assert status["request_counts"]["failed"] == 0
    workers = await rows(engine, "SELECT DISTINCT worker FROM attempt")
    assert len(workers) == 2, "both worker processes ran requests"
    assert (await rows(engine, "SELECT count(*) FROM attempt"))[0][0] == 500

    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    done = run_cli(env, "results", batch["id"], "-o", str(out), "--errors", str(errors))
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(lines) == 500
    for line in lines:
        number = line["custom_id"].removeprefix("item-")
        assert line["response"]["status_code"] == 200
        assert (
            line["response"]["body"]["choices"][0]["message"]["content"] == f"echo: question number {number}"
        )
        assert line["response"]["request_id"] == line["response"]["body"]["id"]
        assert line["error"] is None
    assert errors.read_bytes() == b""


async def test_fallback_to_the_second_model_is_recorded(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(down_models=["sim/echo"])
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("only", "hello")])
    submit(env, path, "--models", "sim/echo,sim/backup")
    await run_workers(env, tmp_path)
    attempt = (
        await rows(
            engine, "SELECT models_sent, model, provider, generation_id, cost, http_status FROM attempt"
        )
    )[0]
    assert attempt.models_sent == ["sim/echo", "sim/backup"]
    assert attempt.model == "sim/backup"
    assert attempt.provider == "SimProvider"
    assert attempt.generation_id.startswith("gen-")
    assert attempt.cost > 0
    assert attempt.http_status == 200
    assert (await rows(engine, "SELECT model FROM result"))[0][0] == "sim/backup"
    sent = (await simulator.calls())[0]["body"]
    assert sent["models"] == ["sim/echo", "sim/backup"]


async def test_a_failing_then_succeeding_request_shows_its_attempts(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(
        rules=[
            {"match": "flaky", "kind": "status", "status": 500, "times": 1},
            {"match": "flaky", "kind": "error_in_200", "times": 1},
            {"match": "flaky", "kind": "not_json", "status": 502, "times": 1},
        ]
    )
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("steady", "fine"), chat_line("flaky", "flaky one")])
    submit(env, path, "--models", "sim/echo")
    await run_workers(env, tmp_path)
    history = await rows(
        engine,
        "SELECT a.number, a.outcome, a.http_status, a.error_code FROM attempt a JOIN request r ON r.id = a.request_id"
        " WHERE r.custom_id = 'flaky' ORDER BY a.number",
    )
    assert [(h.number, h.outcome, h.http_status) for h in history] == [
        (1, "retry", 500),
        (2, "retry", 200),
        (3, "retry", 502),
        (4, "success", 200),
    ]
    assert history[2].error_code == "invalid_json"
    request = (
        await rows(engine, "SELECT status, attempts, failures FROM request WHERE custom_id = 'flaky'")
    )[0]
    assert tuple(request) == ("completed", 4, 3)


async def test_a_request_out_of_attempts_fails_and_goes_to_the_error_file(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "doomed", "kind": "status", "status": 500, "message": "boom"}])
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("ok", "fine"), chat_line("bad", "doomed")])
    batch = submit(env, path, "--models", "sim/echo", "--max-attempts", "3")
    await run_workers(env, tmp_path)
    assert (
        await rows(
            engine,
            "SELECT count(*) FROM attempt a JOIN request r ON r.id = a.request_id WHERE r.custom_id = 'bad'",
        )
    )[0][0] == 3
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    run_cli(env, "results", batch["id"], "-o", str(out), "--errors", str(errors))
    assert [orjson.loads(x)["custom_id"] for x in out.read_bytes().splitlines()] == ["ok"]
    failure = orjson.loads(errors.read_bytes().splitlines()[0])
    assert failure["custom_id"] == "bad"
    assert failure["error"] == {"code": "500", "message": "boom"}
    assert failure["response"]["status_code"] == 500


async def test_http_400_fails_at_once_with_openrouters_message(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "hello", model="sim/no-such-model")])
    # Past the submit-time check (as when GET /models was unreachable), the worker meets OpenRouter's 400.
    submit(env, path, "--no-check-models")
    await run_workers(env, tmp_path)
    request = (await rows(engine, "SELECT status, attempts, last_error FROM request"))[0]
    assert request.status == "failed"
    assert request.attempts == 1
    assert request.last_error == "sim/no-such-model is not a valid model ID"


async def test_http_401_pauses_the_batch_with_a_message_about_the_key_and_no_retries(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(valid_keys=["sk-or-v1-the-right-one"])
    path = write_jsonl(tmp_path / "in.jsonl", (chat_line(f"c{i}", "x") for i in range(40)))
    batch = submit(env, path, "--models", "sim/echo")
    await run_workers(env, tmp_path, concurrency=2)
    status = orjson.loads(run_cli(env, "status", batch["id"], "--json").stdout)
    assert status["status"] == "paused"
    assert status["pause"]["reason"] == "auth"
    assert "OPENROUTER_API_KEY" in status["pause"]["message"]
    assert status["request_counts"]["pending"] == 40
    # Only the calls already in flight when the first 401 came back were made.
    assert len(await simulator.calls()) <= 2
    assert (await rows(engine, "SELECT max(failures) FROM request"))[0][0] == 0

    await simulator.configure(valid_keys=None)
    assert run_cli(env, "resume", batch["id"]).returncode == 0
    await run_workers(env, tmp_path)
    status = orjson.loads(run_cli(env, "status", batch["id"], "--json").stdout)
    assert (status["status"], status["request_counts"]["completed"]) == ("completed", 40)


async def test_a_completed_request_is_never_called_again_by_a_duplicate_job(
    env: dict[str, str],
    engine: AsyncEngine,
    simulator: Simulator,
    redis: ArqRedis,
    queue_name: str,
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "once")])
    submit(env, path, "--models", "sim/echo")
    await run_workers(env, tmp_path)
    assert len(await simulator.calls()) == 1
    # The same job again (a redelivery), and the job of a re-run after a crash: both find it finished.
    assert await enqueue_requests(redis, queue_name, [(1, 0, 0), (1, 1, 0)]) == [1, 1]
    await run_workers(env, tmp_path)
    assert len(await simulator.calls()) == 1
    assert (await rows(engine, "SELECT count(*) FROM attempt"))[0][0] == 1
    assert (await rows(engine, "SELECT count(*) FROM result"))[0][0] == 1


async def test_connection_resets_and_read_timeouts_are_retried(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(
        rules=[
            {"match": "cut", "kind": "reset", "times": 1},
            {"match": "slow", "kind": "hang", "seconds": 30, "times": 1},
        ]
    )
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("cut", "cut me"), chat_line("slow", "slow me")])
    submit(env, path, "--models", "sim/echo")
    await run_workers({**env, "ORBATCH_REQUEST_TIMEOUT": "1"}, tmp_path)
    history = await rows(
        engine,
        "SELECT r.custom_id, a.outcome, a.error_code FROM attempt a JOIN request r ON r.id = a.request_id"
        " ORDER BY r.custom_id, a.number",
    )
    assert [tuple(h) for h in history] == [
        ("cut", "retry", "connection_error"),
        ("cut", "success", None),
        ("slow", "retry", "timeout"),
        ("slow", "success", None),
    ]


async def test_an_answer_with_a_nul_character_is_stored_once_not_called_again(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(
        rules=[{"match": "nul", "kind": "reply", "content": "before\u0000after \\u0000 stays"}]
    )
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("n", "nul please")])
    submit(env, path, "--models", "sim/echo")
    await run_workers(env, tmp_path)
    assert len(await simulator.calls()) == 1
    (content,) = (await rows(engine, "SELECT content FROM result"))[0]
    assert content == "before\ufffdafter \\u0000 stays"
    body_content = (await rows(engine, "SELECT body->'choices'->0->'message'->>'content' FROM result"))[0][0]
    assert body_content == content
