"""The batch lane sends a schema request as the live lane does (`provider.require_parameters`, `--heal`'s plugin),
retries a remote line that failed its schema live with the correction turn, and never puts a request in a remote
batch whose model cannot hold it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.formats.structured import HEALING_PLUGIN
from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl

# Fleets of worker processes against the simulator's batches: with the other fleets, not beside them.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fleets")]

# Remote batches polled five times a second.
LANE_ENV = {"ORBATCH_REMOTE_POLL_SECONDS": "0.2", "ORBATCH_REMOTE_LEASE_SECONDS": "3"}

LABEL = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["good", "bad"]}},
    "required": ["label"],
    "additionalProperties": False,
}
ASKING = {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": LABEL}}
# About 1,000 tokens as orbatch counts them, over sim/small's context of 512 (see tests/worker/test_context_fit.py).
LONG = "word " * 600


def submit(env: dict[str, str], tmp_path: Path, lines: list[dict[str, Any]], *args: str) -> str:
    done = run_cli(env, "submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--json", *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def burst(env: dict[str, str], tmp_path: Path) -> None:
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(120) == [0], workers.output()[-4000:]


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


def sent_lines(batches: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every line the remote batches were sent, by its first message's text."""
    return {line["body"]["messages"][0]["content"]: line["body"] for b in batches for line in b["lines"]}


async def test_a_schema_line_of_the_batch_lane_is_sent_with_require_parameters_and_heal_as_a_live_call_is(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    lines = [
        chat_line("schema", "one", response_format=ASKING),
        chat_line("plain", "two"),
        chat_line(
            "own", "three", response_format=ASKING, provider={"require_parameters": False, "sort": "price"}
        ),
    ]
    batch_id = submit(
        {**env, **LANE_ENV}, tmp_path, lines, "--models", "sim/echo", "--lane", "batch", "--heal"
    )
    await burst({**env, **LANE_ENV}, tmp_path)
    sent = sent_lines(await simulator.batches())
    assert set(sent) == {"one", "two", "three"}
    assert sent["one"]["provider"] == {"require_parameters": True}
    assert sent["one"]["plugins"] == [{"id": HEALING_PLUGIN}]
    assert "provider" not in sent["two"]
    assert "plugins" not in sent["two"]
    assert sent["three"]["provider"] == {"require_parameters": False, "sort": "price"}
    assert sent["three"]["plugins"] == [{"id": HEALING_PLUGIN}]
    assert await simulator.calls() == []  # every answer came from the remote batch
    # The stored bodies are the lines' own: the routing is added as they are sent.
    stored = await rows(engine, "SELECT custom_id, body, status FROM request WHERE batch_id = :b", b=batch_id)
    assert {r.custom_id: r.status for r in stored} == dict.fromkeys(("schema", "plain", "own"), "completed")
    assert all("plugins" not in r.body for r in stored)
    assert next(r.body for r in stored if r.custom_id == "schema").get("provider") is None


async def test_without_heal_a_schema_line_of_the_batch_lane_asks_for_no_plugin(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    lines = [chat_line("schema", "one", response_format=ASKING)]
    submit({**env, **LANE_ENV}, tmp_path, lines, "--models", "sim/echo", "--lane", "batch")
    await burst({**env, **LANE_ENV}, tmp_path)
    sent = sent_lines(await simulator.batches())
    assert sent["one"]["provider"] == {"require_parameters": True}
    assert "plugins" not in sent["one"]


async def test_a_remote_line_whose_reply_fails_its_schema_is_retried_live_with_the_correction_turn(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    # The model always errs, in its batch lines too; a correction turn it always answers right.
    await simulator.configure(err_rate={"sim/echo": 1.0})
    line = chat_line("a", "label me: fine food", response_format=ASKING)
    submit({**env, **LANE_ENV}, tmp_path, [line], "--models", "sim/echo", "--lane", "batch", "--heal")
    await burst({**env, **LANE_ENV}, tmp_path)
    attempts = await rows(
        engine, "SELECT number, lane, outcome, error_code, reply, model FROM attempt ORDER BY number"
    )
    assert [(a.lane, a.outcome, a.error_code, a.model) for a in attempts] == [
        ("batch", "retry", "invalid_output", "sim/echo:batch"),
        ("live", "success", None, "sim/echo"),
    ]
    broken = attempts[0].reply
    assert broken
    assert not broken.endswith("}")  # the erring model's invalid JSON, kept on the line's attempt
    (call,) = [c["body"] for c in await simulator.calls()]
    assert call["messages"][:1] == line["messages"]
    assistant, user = call["messages"][1:]
    assert assistant == {"role": "assistant", "content": broken}
    assert user["role"] == "user"
    assert "follows the schema" in user["content"]
    # The retry is routed and healed as the remote line was.
    assert call["provider"] == {"require_parameters": True}
    assert call["plugins"] == [{"id": HEALING_PLUGIN}]
    (answer,) = await rows(engine, "SELECT content FROM result")
    assert orjson.loads(answer.content)["label"] in ("good", "bad")


async def test_a_request_the_batch_model_cannot_hold_runs_live_on_the_next_model_that_can(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    prices = {"prompt": "0.000001", "completion": "0.000002"}
    await simulator.configure(
        models=[
            {"id": "sim/small", **prices, "context_length": 512},
            {"id": "sim/small:batch", **prices, "context_length": 512},
            {"id": "sim/echo", **prices},
            {"id": "sim/echo:batch", **prices},
        ]
    )
    lines = [chat_line("long", LONG), chat_line("short", "hello")]
    batch_id = submit(
        {**env, **LANE_ENV}, tmp_path, lines, "--models", "sim/small,sim/echo", "--lane", "batch"
    )
    # Decided at submit: the long request is born live, the short one in the batch lane.
    born = await rows(engine, "SELECT custom_id, status FROM request WHERE batch_id = :b", b=batch_id)
    assert {(r.custom_id, r.status) for r in born} == {("long", "pending"), ("short", "remote")}
    await burst({**env, **LANE_ENV}, tmp_path)
    (remote,) = await simulator.batches()
    assert remote["model"] == "sim/small:batch"
    assert [line["body"]["messages"][0]["content"] for line in remote["lines"]] == ["hello"]
    attempts = await rows(
        engine,
        "SELECT r.custom_id, a.lane, a.models_sent, a.models_skipped, a.outcome, a.model FROM attempt a"
        " JOIN request r ON r.id = a.request_id ORDER BY r.line_no, a.number",
    )
    assert [tuple(a) for a in attempts] == [
        ("long", "live", ["sim/echo"], ["sim/small"], "success", "sim/echo"),
        ("short", "batch", ["sim/small:batch"], None, "success", "sim/small:batch"),
    ]
    # No live call offered sim/small the long prompt either.
    assert [c["body"].get("models") or [c["body"]["model"]] for c in await simulator.calls()] == [
        ["sim/echo"]
    ]
