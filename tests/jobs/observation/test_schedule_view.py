"""`status BATCH` says whose turn it is: the batches a running batch shares the fleet with, its priority, the
worker slots it holds, and its requests waiting for their moment."""

from __future__ import annotations

from pathlib import Path

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import chat_line, run_cli, write_jsonl


def _submit(env: dict[str, str], tmp_path: Path, name: str, *args: str) -> str:
    path = write_jsonl(tmp_path / f"{name}.jsonl", [chat_line(f"{name}{i}", f"{name} {i}") for i in range(5)])
    done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--name", name, "--json", *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def test_status_says_the_batches_ahead_of_it_those_beside_it_and_its_requests_waiting(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    nightly = _submit(env, tmp_path, "nightly", "--priority", "background")
    labels = _submit(env, tmp_path, "labels")
    other = _submit(env, tmp_path, "other")
    behind = orjson.loads(run_cli(env, "status", nightly, "--json").stdout)
    assert behind["priority"] == "background"
    assert (
        "priority background: 2 running batches of a higher priority go first; it holds 0 worker slots"
        in (behind["waiting"])
    )
    beside = orjson.loads(run_cli(env, "status", labels, "--json").stdout)["waiting"]
    assert "shares the fleet fairly with 1 other normal batch" in beside
    # Requests given back to wait for a held free-tier slot (or a retry) wait in Postgres, not in a worker.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE request SET next_attempt_at = now() + interval '40 seconds' WHERE batch_id = :b"),
            {"b": other},
        )
    later = orjson.loads(run_cli(env, "status", other, "--json").stdout)["waiting"]
    assert "5 requests wait for their moment" in later
    assert "holding no worker slot meanwhile" in later
    # Changed later, the priority moves the batch's next requests to its new tier, and status says so.
    assert run_cli(env, "priority", nightly, "urgent").returncode == 0
    raised = orjson.loads(run_cli(env, "status", nightly, "--json").stdout)
    assert raised["priority"] == "urgent"
    assert "higher priority" not in (raised["waiting"] or "")
    refused = run_cli(env, "priority", nightly, "soon")
    assert refused.returncode == 2
    assert "urgent" in refused.stderr
