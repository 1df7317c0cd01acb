"""Completion windows: `24h` and longer ones; past its window a batch is `expired` as OpenAI does it."""

from __future__ import annotations

import asyncio
import time

import openai
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import NewKey
from tests.jobs.api.conftest import ApiServer, batch_lines, jsonl, wait_for
from tests.support import Simulator, until


async def _calls_of(simulator: Simulator, prefix: str) -> int:
    """How many calls the simulator answered for the lines `batch_lines(..., prefix)` made."""
    return sum(
        call["body"]["messages"][0]["content"].startswith(f"prompt of {prefix}")
        for call in await simulator.calls()
    )


async def _settled(simulator: Simulator) -> bool:
    return int((await simulator.stats())["in_flight"]) == 0


async def test_a_batch_past_its_window_expires_keeping_what_was_answered(
    api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator, engine: AsyncEngine
) -> None:
    await simulator.configure(latency_ms=400)
    client = api_server.client(owners["alice"].key)
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(300))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="48h",
        extra_body={"models": ["sim/echo"]},
    )
    assert batch.expires_at == batch.created_at + 48 * 3600
    deadline = time.monotonic() + 30
    while (client.batches.retrieve(batch.id).request_counts.completed or 0) < 5:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # The window runs out (two days, here at once).
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE batch SET expires_at = now() WHERE id = :id"), {"id": batch.id})
    expired = wait_for(client, batch.id)
    assert expired.status == "expired"
    assert expired.expired_at is not None
    assert expired.expired_at >= expired.created_at
    counts = expired.request_counts
    assert counts is not None
    assert 5 <= counts.completed < 300
    assert counts.failed == 0
    assert expired.output_file_id is not None
    assert expired.error_file_id is not None
    answered = [
        orjson.loads(line) for line in client.files.content(expired.output_file_id).content.splitlines()
    ]
    unanswered = [
        orjson.loads(line) for line in client.files.content(expired.error_file_id).content.splitlines()
    ]
    assert len(answered) == counts.completed
    assert len(unanswered) == 300 - counts.completed
    assert {line["error"]["code"] for line in unanswered} == {"batch_expired"}
    assert {line["custom_id"] for line in answered} | {line["custom_id"] for line in unanswered} == {
        f"q{i}" for i in range(300)
    }
    # Nothing more is called for it while the worker runs a batch made after the expiry to its end: the window is
    # the feeder's passes from the expiry until that batch was fed and answered, passes that would have fed any
    # unanswered request of the expired batch still taken for due (the feeder takes every batch's in one query).
    assert await until(lambda: _settled(simulator), "no call in flight at the simulator")
    calls = await _calls_of(simulator, "q")
    later = client.batches.create(
        input_file_id=client.files.create(file=("s.jsonl", jsonl(batch_lines(2, "s"))), purpose="batch").id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["sim/echo"]},
    )
    assert (await asyncio.to_thread(wait_for, client, later.id)).status == "completed"
    assert await until(lambda: _settled(simulator), "no call in flight at the simulator")
    assert await _calls_of(simulator, "q") == calls
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_windows_from_a_day_to_thirty_are_taken_and_others_refused(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["bob"].key)
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(1))), purpose="batch")
    for window, seconds in (("24h", 86400), ("7d", 7 * 86400), ("30d", 30 * 86400), ("36h", 36 * 3600)):
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window=window,  # type: ignore[arg-type]
            extra_body={"models": ["sim/echo"]},
        )
        assert (batch.completion_window, batch.expires_at) == (window, batch.created_at + seconds)
    for window in ("1h", "23h", "31d", "24", "1w", "24 h", ""):
        with pytest.raises(openai.BadRequestError) as caught:
            client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window=window,  # type: ignore[arg-type]
            )
        assert caught.value.param == "completion_window"  # type: ignore[attr-defined]
