"""The batch lane through the HTTP API: `extra_body={"lane": ...}` on a create, and `auto`'s rule for a window."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import NewKey
from tests.conftest import Services
from tests.jobs.api.conftest import ApiServer, api_env, batch_lines, jsonl, wait_for
from tests.support import Simulator


@pytest.fixture(scope="module")
def lane_server(
    services: Services,
    database_url: str,
    queue_name: str,
    session_simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    """A server whose worker polls remote batches five times a second."""
    env = api_env(services, database_url, session_simulator, queue_name, ORBATCH_REMOTE_POLL_SECONDS="0.2")
    server = ApiServer(env, tmp_path_factory.mktemp("api") / "serve.log")
    yield server
    assert server.stop() == 0, server.log()[-3000:]


def create(server: ApiServer, key: str, count: int, window: str, lane: str) -> str:
    client = server.client(key)
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(count))), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]
        extra_body={"models": ["sim/echo"], "lane": lane},
    )
    return created.id


async def test_a_batch_created_with_the_batch_lane_runs_through_the_batch_api_at_half_price(
    lane_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator, engine: AsyncEngine
) -> None:
    client = lane_server.client(owners["alice"].key)
    batch_id = create(lane_server, owners["alice"].key, 6, "24h", "batch")
    done = wait_for(client, batch_id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert done.request_counts.completed == 6
    extras = done.model_extra["orbatch"]  # type: ignore[index]
    assert extras["lane"] == "batch"
    assert extras["lane_note"] is None
    assert extras["request_counts"]["remote"] == 0
    remote = await simulator.batches()
    assert [len(b["lines"]) for b in remote] == [6]
    assert await simulator.calls() == []
    assert done.output_file_id is not None
    output = [orjson.loads(line) for line in client.files.content(done.output_file_id).content.splitlines()]
    assert sorted(line["custom_id"] for line in output) == [f"q{i}" for i in range(6)]
    for line in output:
        assert (
            line["response"]["body"]["choices"][0]["message"]["content"]
            == f"echo: prompt of {line['custom_id']}"
        )
        assert line["response"]["body"]["id"].startswith("gen-batch-")
    async with engine.connect() as conn:
        lanes = (
            await conn.execute(text("SELECT DISTINCT lane FROM attempt WHERE batch_id = :b"), {"b": batch_id})
        ).all()
    assert [tuple(r) for r in lanes] == [("batch",)]


@pytest.mark.parametrize(("window", "remote"), [("24h", False), ("48h", True)])
async def test_auto_takes_the_batch_api_only_when_the_window_holds_a_remote_day_and_more(
    lane_server: ApiServer,
    owners: dict[str, NewKey],
    simulator: Simulator,
    engine: AsyncEngine,
    window: str,
    remote: bool,
) -> None:
    client = lane_server.client(owners["bob"].key)
    batch_id = create(lane_server, owners["bob"].key, 4, window, "auto")
    done = wait_for(client, batch_id)
    assert done.status == "completed"
    assert done.model_extra["orbatch"]["lane"] == "auto"  # type: ignore[index]
    assert len(await simulator.batches()) == (1 if remote else 0)
    assert len(await simulator.calls()) == (0 if remote else 4)
