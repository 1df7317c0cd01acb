"""Chains that fit the prompt: a line no model of its chain can hold is refused at submit, and a model whose
context cannot hold a request is skipped without a call, said in its attempt and in `usage`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl

# 3,000 characters: about 1,000 tokens as orbatch counts a model whose tokenizer it lacks (UTF-8 bytes / 3),
# 750 as the simulator counts; either way over sim/small's context of 512 tokens.
LONG = "word " * 600


def submit(env: dict[str, str], tmp_path: Path, lines: list[dict[str, Any]], *args: str) -> str:
    done = run_cli(env, "submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--json", *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def run(env: dict[str, str], tmp_path: Path) -> None:
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(90) == [0], workers.output()[-3000:]


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]


def test_a_line_no_model_of_its_chain_can_hold_is_refused_at_submit(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            chat_line("short", "hello"),
            chat_line("long", LONG),
            # The prompt fits; the prompt and the completion it asks room for do not.
            chat_line("bounded", "hello", max_tokens=600),
            # Another chain of its own, with a model that takes it.
            chat_line("own", LONG, models=["sim/small", "sim/echo"]),
        ],
    )
    done = run_cli(env, "submit", str(path), "--models", "sim/small")
    assert done.returncode == 2, done.stdout
    assert "2 bad lines" in done.stderr
    assert (
        "LINE 2: the prompt and its max_tokens (~1008 tokens) fit no model of its chain: sim/small (context 512)"
        in (done.stderr)
    )
    assert "LINE 3: the prompt and its max_tokens (~610 tokens) fit no model of its chain" in done.stderr
    assert "LINE 1" not in done.stderr
    assert "LINE 4" not in done.stderr


async def test_a_model_that_cannot_hold_the_prompt_is_skipped_without_a_call(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    batch_id = submit(
        env,
        tmp_path,
        [chat_line("long", LONG), chat_line("short", "hello")],
        "--models",
        "sim/small,sim/echo",
    )
    assert await rows(engine, "SELECT custom_id, context_needed FROM request ORDER BY line_no") == [
        ("long", 1008),
        ("short", 10),
    ]
    await run(env, tmp_path)
    attempts = await rows(
        engine,
        "SELECT r.custom_id, a.models_sent, a.models_skipped, a.outcome, a.model FROM attempt a"
        " JOIN request r ON r.id = a.request_id ORDER BY r.line_no, a.number",
    )
    assert attempts == [
        ("long", ["sim/echo"], ["sim/small"], "success", "sim/echo"),
        ("short", ["sim/small", "sim/echo"], None, "success", "sim/small"),
    ]
    # No call ever offered sim/small the long prompt.
    calls = await simulator.calls()
    offered = [(c["body"].get("models") or [c["body"]["model"]], c["status"]) for c in calls]
    assert sorted(offered) == [(["sim/echo"], 200), (["sim/small", "sim/echo"], 200)]
    usage = run_cli(env, "usage", batch_id, "--json")
    assert usage.returncode == 0, usage.stderr
    (batch,) = orjson.loads(usage.stdout)["batches"]
    assert batch["skipped_context"] == 1
    assert batch["models"]["sim/small"]["skipped_context"] == 1
    assert batch["models"]["sim/small"]["calls"] == 1
    assert batch["models"]["sim/echo"]["skipped_context"] == 0
    table = run_cli(env, "usage", batch_id)
    assert "skipped (context)" in table.stdout


async def test_a_window_of_models_too_small_is_passed_by_without_spending_an_attempt(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    """Three small models fill the first window; without the skip the call is a 400 and the request fails, with it
    the next model answers at the first call. Both in the same run, the second with the catalogue's contexts
    forgotten (as an upstream that lists none)."""
    small = [
        {"id": f"sim/small-{n}", "prompt": "0.000001", "completion": "0.000002", "context_length": 512}
        for n in (1, 2, 3)
    ]
    await simulator.configure(
        models=[*small, {"id": "sim/echo", "prompt": "0.000001", "completion": "0.000002"}]
    )
    chain = "sim/small-1,sim/small-2,sim/small-3,sim/echo"
    skipping = submit(env, tmp_path, [chat_line("long", LONG)], "--models", chain, "--name", "skipping")
    await run(env, tmp_path)
    assert await rows(
        engine, "SELECT status, failures, chain_pos FROM request WHERE batch_id = :b", b=skipping
    ) == [("completed", 0, 0)]
    assert await rows(engine, "SELECT models_sent, models_skipped, http_status FROM attempt") == [
        (["sim/echo"], ["sim/small-1", "sim/small-2", "sim/small-3"], 200)
    ]
    # The same file again as a new batch, with every model's context unknown: the first window is called.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE model_price SET context_length = NULL"))
    blind = submit(env, tmp_path, [chat_line("long", LONG)], "--models", chain, "--new", "--name", "blind")
    await run(env, tmp_path)
    assert await rows(engine, "SELECT status FROM request WHERE batch_id = :b", b=blind) == [("failed",)]
    blind_calls = await rows(
        engine, "SELECT models_sent, http_status FROM attempt WHERE batch_id = :b", b=blind
    )
    assert blind_calls == [(["sim/small-1", "sim/small-2", "sim/small-3"], 400)]
    costs = dict(await rows(engine, "SELECT batch_id, coalesce(sum(cost), 0) FROM attempt GROUP BY 1"))
    assert costs[skipping] > 0
    assert costs[blind] == 0
    assert len(await simulator.calls()) == 2
