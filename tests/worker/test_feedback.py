"""Self-correcting structured output: a retry after a reply that failed its schema tells the model what was
wrong; schema requests go only to providers that honour `response_format`; `--heal` asks for the healing plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.formats.structured import HEALING_PLUGIN
from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl

LABEL = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["good", "bad"]}},
    "required": ["label"],
    "additionalProperties": False,
}
ASKING = {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": LABEL}}
BROKEN = '{"label": "go'


async def rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())


async def run_batch(env: dict[str, str], tmp_path: Path, lines: list[dict[str, Any]], *options: str) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--max-attempts", "3", *options)
    assert done.returncode == 0, done.stderr
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]


def chat_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["body"] for c in calls if c["path"].endswith("/chat/completions")]


@pytest.mark.slow
async def test_the_retry_after_an_invalid_reply_quotes_it_and_the_error_and_usage_counts_it(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "label me", "kind": "reply", "content": BROKEN, "times": 1}])
    line = chat_line("a", "label me: fine food", response_format=ASKING)
    await run_batch(env, tmp_path, [line])
    first, second = chat_calls(await simulator.calls())
    assert first["messages"] == line["messages"]
    assert first["provider"] == {"require_parameters": True}
    assert "plugins" not in first
    assert second["messages"][:1] == line["messages"]
    assistant, user = second["messages"][1:]
    assert assistant == {"role": "assistant", "content": BROKEN}
    assert user["role"] == "user"
    assert "not JSON" in user["content"]
    assert "follows the schema" in user["content"]
    assert second["response_format"] == ASKING
    outcomes = await rows(engine, "SELECT outcome, error_code, reply FROM attempt ORDER BY number")
    assert [(a.outcome, a.error_code) for a in outcomes] == [("retry", "invalid_output"), ("success", None)]
    assert outcomes[0].reply == BROKEN
    assert outcomes[1].reply is None
    # The stored body is the line's own: the correction was built at call time.
    (body,) = await rows(engine, "SELECT body FROM request")
    assert body.body["messages"] == line["messages"]
    assert "provider" not in body.body
    batch_id = (await rows(engine, "SELECT id FROM batch"))[0].id
    usage = run_cli(env, "usage", batch_id, "--json")
    assert usage.returncode == 0, usage.stderr
    report = orjson.loads(usage.stdout)
    assert report["batches"][0]["corrected"] == 1
    assert report["total"]["corrected"] == 1
    shown = run_cli(env, "usage", batch_id)
    assert "1 answer needed a correction" in shown.stdout


@pytest.mark.slow
async def test_without_feedback_the_retry_sends_the_same_prompt(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "label me", "kind": "reply", "content": BROKEN, "times": 1}])
    line = chat_line("a", "label me: fine food", response_format=ASKING)
    await run_batch(env, tmp_path, [line], "--no-feedback")
    first, second = chat_calls(await simulator.calls())
    assert first == second
    assert second["messages"] == line["messages"]
    (options,) = await rows(engine, "SELECT options FROM batch")
    assert options.options["feedback"] is False


@pytest.mark.slow
async def test_require_parameters_goes_with_a_schema_unless_the_line_says_and_heal_asks_for_the_plugin(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    lines = [
        chat_line("schema", "one", response_format=ASKING),
        chat_line("plain", "two"),
        chat_line(
            "own", "three", response_format=ASKING, provider={"require_parameters": False, "sort": "price"}
        ),
    ]
    await run_batch(env, tmp_path, lines, "--heal")
    sent = {b["messages"][0]["content"]: b for b in chat_calls(await simulator.calls())}
    assert sent["one"]["provider"] == {"require_parameters": True}
    assert sent["one"]["plugins"] == [{"id": HEALING_PLUGIN}]
    assert "provider" not in sent["two"]
    assert "plugins" not in sent["two"]
    assert sent["three"]["provider"] == {"require_parameters": False, "sort": "price"}
    assert sent["three"]["plugins"] == [{"id": "response-healing"}]
    (options,) = await rows(engine, "SELECT options FROM batch")
    assert options.options["heal"] is True
    assert "feedback" not in options.options


@pytest.mark.slow
async def test_feedback_makes_more_records_end_valid_with_a_model_that_errs(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(err_rate={"sim/echo": 0.5})
    lines = [chat_line(f"r{i}", f"review {i}", response_format=ASKING) for i in range(40)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    for options in ([], ["--no-feedback"]):
        done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--max-attempts", "2", *options)
        assert done.returncode == 0, done.stderr
    workers = Workers(env, tmp_path, 1, "--burst", "--concurrency", "4")
    assert await workers.wait(120) == [0], workers.output()[-3000:]
    shares = {
        r.feedback: r.completed / 40
        for r in await rows(
            engine,
            "SELECT coalesce((b.options->>'feedback')::bool, true) AS feedback,"
            " count(*) FILTER (WHERE r.status = 'completed') AS completed"
            " FROM batch b JOIN request r ON r.batch_id = b.id GROUP BY 1",
        )
    }
    # The simulator's erring model always answers a correction turn right: with feedback every record ends
    # valid within two attempts; without, a record fails when both draws err.
    assert shares[True] == 1.0
    assert shares[False] < 1.0
