"""Model chains walked across attempts, exact and estimated costs, `usage`, and the spending guards."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl

CHAIN = "sim/echo,sim/backup,sim/spare,sim/last-resort,sim/echo:free"


def submit(env: dict[str, str], tmp_path: Path, lines: list[dict[str, Any]], *args: str) -> str:
    done = run_cli(env, "submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--json", *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def run(env: dict[str, str], tmp_path: Path, *args: str) -> None:
    workers = Workers(env, tmp_path, 1, "--burst", *args)
    assert await workers.wait(90) == [0], workers.output()[-3000:]


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def test_a_five_model_chain_with_the_first_four_down_walks_to_the_fifth(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(down_models=["sim/echo", "sim/backup", "sim/spare", "sim/last-resort"])
    submit(env, tmp_path, [chat_line("x", "hello")], "--models", CHAIN)
    await run(env, tmp_path)
    attempts = await rows(
        engine, "SELECT number, models_sent, outcome, http_status, model FROM attempt ORDER BY number"
    )
    assert [tuple(a) for a in attempts] == [
        (1, ["sim/echo", "sim/backup", "sim/spare"], "fallback", 503, None),
        (2, ["sim/last-resort", "sim/echo:free"], "success", 200, "sim/echo:free"),
    ]
    assert await rows(engine, "SELECT model FROM result") == [("sim/echo:free",)]
    bodies = [c["body"] for c in await simulator.calls()]
    assert [b["models"] for b in bodies] == [
        ["sim/echo", "sim/backup", "sim/spare"],
        ["sim/last-resort", "sim/echo:free"],
    ]


async def test_a_chain_that_is_down_everywhere_fails_after_its_attempts(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(down_models=CHAIN.split(","))
    submit(env, tmp_path, [chat_line("x", "hello")], "--models", CHAIN, "--max-attempts", "4")
    await run(env, tmp_path)
    sent = [a[0] for a in await rows(engine, "SELECT models_sent[1] FROM attempt ORDER BY number")]
    assert sent == ["sim/echo", "sim/last-resort", "sim/echo", "sim/last-resort"]
    assert await rows(engine, "SELECT status, failures FROM request") == [("failed", 4)]


async def test_an_unknown_model_is_refused_at_submit_naming_it(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", [chat_line("a", "x"), chat_line("b", "y", model="nobody/nothing")]
    )
    bad_option = run_cli(env, "submit", str(path), "--models", "sim/echo,sim/typo")
    assert bad_option.returncode == 2
    assert "--models: unknown model 'sim/typo'" in bad_option.stderr
    bad_line = run_cli(env, "submit", str(path), "--models", "sim/echo")
    assert bad_line.returncode == 2
    assert "LINE 2: unknown model 'nobody/nothing'" in bad_line.stderr


def test_without_the_model_list_submit_warns_and_goes_on(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    done = run_cli(
        {**env, "OPENROUTER_BASE_URL": "http://127.0.0.1:9/api/v1"}, "submit", str(path), "--models", "m/x"
    )
    assert done.returncode == 0, done.stderr
    assert "could not read OpenRouter's model list" in done.stderr


def test_free_only_refuses_paid_models_naming_the_lines(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            chat_line("a", "x"),
            chat_line("b", "y", models=["sim/echo:free", "sim/backup"]),
            chat_line("c", "z"),
        ],
    )
    option = run_cli(env, "submit", str(path), "--free-only", "--models", "sim/echo:free,sim/echo")
    assert option.returncode == 2
    assert "--models: --free-only: 'sim/echo' is not a free model" in option.stderr
    line = run_cli(env, "submit", str(path), "--free-only", "--models", "sim/echo:free")
    assert line.returncode == 2
    assert "LINE 2: --free-only: 'sim/backup' is not a free model" in line.stderr


async def test_a_free_only_batch_never_sends_a_paid_model(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    submit(env, tmp_path, [chat_line("a", "x")], "--models", "sim/echo")
    # However the batch came to hold a paid model (an edit by hand), the worker refuses to send it.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE batch SET free_only = true"))
    await run(env, tmp_path)
    assert await simulator.calls() == []
    ((status, error),) = await rows(engine, "SELECT status, last_error FROM request")
    assert status == "failed"
    assert "--free-only" in error
    assert "sim/echo" in error


async def test_cost_is_stored_exactly_as_reported(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    submit(env, tmp_path, [chat_line(f"c{i}", "x" * (40 + i)) for i in range(5)], "--models", "sim/echo")
    await run(env, tmp_path)
    results = await rows(
        engine, "SELECT a.cost, a.cost_estimated, r.body FROM attempt a JOIN result r ON r.attempt_id = a.id"
    )
    for cost, estimated, body in results:
        assert cost == Decimal(repr(body["usage"]["cost"]))
        assert cost > 0
        assert not estimated


async def test_a_missing_cost_is_estimated_from_list_prices_and_free_models_cost_nothing(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(omit_cost=True)
    submit(
        env,
        tmp_path,
        [chat_line("paid", "x" * 40, model="sim/echo"), chat_line("free", "y" * 40, model="sim/echo:free")],
    )
    await run(env, tmp_path)
    costs = {
        r.custom_id: r
        for r in await rows(
            engine,
            "SELECT q.custom_id, a.cost, a.cost_estimated, a.prompt_tokens, a.completion_tokens"
            " FROM attempt a JOIN request q ON q.id = a.request_id",
        )
    }
    paid = costs["paid"]
    # sim/echo lists 0.000001 per prompt token and 0.000002 per completion token.
    assert (
        paid.cost == Decimal("0.000001") * paid.prompt_tokens + Decimal("0.000002") * paid.completion_tokens
    )
    assert paid.cost_estimated
    assert (costs["free"].cost, costs["free"].cost_estimated) == (Decimal(0), False)
    report = orjson.loads(run_cli(env, "usage", "--json").stdout)
    assert report["total"]["cost_estimated"] is True


async def test_byok_calls_cost_the_upstream_price_not_the_fee_on_top(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(byok=True)
    submit(env, tmp_path, [chat_line("a", "x" * 40)], "--models", "sim/echo")
    await run(env, tmp_path)
    ((cost, body),) = await rows(
        engine, "SELECT a.cost, r.body FROM attempt a JOIN result r ON r.attempt_id = a.id"
    )
    assert cost == Decimal(repr(body["usage"]["cost_details"]["upstream_inference_cost"]))
    assert cost != Decimal(repr(body["usage"]["cost"]))


async def test_usage_sums_requests_tokens_and_cost_by_batch_and_served_model(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "down", "kind": "status", "status": 503, "times": 1}])
    first = submit(
        env, tmp_path, [chat_line("a", "one"), chat_line("b", "down")], "--models", "sim/echo,sim/backup"
    )
    second = submit(env, tmp_path, [chat_line("c", "three", model="sim/backup")])
    await run(env, tmp_path)
    report = orjson.loads(run_cli(env, "usage", "--json").stdout)
    batches = {b["id"]: b for b in report["batches"]}
    assert batches[first]["requests"] == 2
    assert batches[first]["calls"] == 3
    assert set(batches[first]["models"]) == {"sim/echo", ""}
    assert batches[second]["models"]["sim/backup"]["requests"] == 1
    total = sum(Decimal(b["cost"]) for b in report["batches"])
    assert Decimal(report["total"]["cost"]) == total > 0
    assert report["total"]["prompt_tokens"] == sum(b["prompt_tokens"] for b in report["batches"])
    one = orjson.loads(run_cli(env, "usage", second, "--json").stdout)
    assert [b["id"] for b in one["batches"]] == [second]
    table = run_cli(env, "usage")
    assert table.returncode == 0
    assert "sim/backup" in table.stdout


async def test_max_cost_stops_the_batch_before_the_next_call_and_resume_raises_it(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    lines = [chat_line(f"c{i}", "x" * 40) for i in range(12)]
    # Each call costs 10 prompt + 11 completion tokens on sim/echo: 0.000032 USD; the cap falls in the 4th.
    batch_id = submit(env, tmp_path, lines, "--models", "sim/echo", "--max-cost", "0.0001")
    await run({**env, "ORBATCH_MAX_IN_FLIGHT": "1"}, tmp_path, "--concurrency", "1")
    status = orjson.loads(run_cli(env, "status", batch_id, "--json").stdout)
    assert (status["status"], status["pause"]["reason"]) == ("paused", "budget")
    assert "--max-cost" in status["pause"]["message"]
    # Overshoot is at most the calls in flight when the cap was reached: here one.
    assert len(await simulator.calls()) == 4
    assert Decimal(status["cost"]) == Decimal("0.000128")

    refused = run_cli(env, "resume", batch_id)
    assert refused.returncode == 2
    assert "pass --max-cost with a higher cap" in refused.stderr
    assert run_cli(env, "resume", batch_id, "--max-cost", "1").returncode == 0
    await run(env, tmp_path)
    status = orjson.loads(run_cli(env, "status", batch_id, "--json").stdout)
    assert (status["status"], status["request_counts"]["completed"]) == ("completed", 12)


def test_a_budget_postgres_cannot_hold_exactly_is_refused_naming_the_option(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    for budget, said in [
        ("1e999999", "--max-cost must be at most 1,000,000,000 USD"),
        ("0", "--max-cost must be more than zero"),
        ("0.0000000000001", "--max-cost must have at most 12 decimal places"),
    ]:
        refused = run_cli(env, "submit", str(path), "--models", "sim/echo", "--max-cost", budget)
        assert refused.returncode == 2, refused.stderr
        assert said in refused.stderr
