"""The Batch API client's pieces: a create's body in the documented order, a line read as a call's answer, the
lane's choices (which slug, what `auto` takes), and the lifecycle's batch-lane statements walked on Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.core.states import Lane, Outcome, RequestStatus
from jobs.scheduling import lifecycle
from jobs.scheduling.lifecycle import CallRecord, LineCall
from jobs.simulator.batches import key_order
from jobs.submission.lanes import AUTO_MIN_WINDOW_SECONDS, auto_has_room, batch_models, batch_slug
from jobs.submission.submit import SubmitOptions, submit_file
from tests.support import chat_line, write_jsonl
from worker.batch_api import BatchBody, RemoteBatchInfo
from worker.classify import Failure, Success
from worker.remote_batches import line_outcome


async def chunks(
    *groups: Iterable[tuple[str, dict[str, Any]]],
) -> AsyncIterator[Iterable[tuple[str, dict[str, Any]]]]:
    for group in groups:
        yield group


async def test_a_create_body_puts_endpoint_and_model_before_the_requests_and_no_model_in_a_line() -> None:
    body = await BatchBody.build(
        "/v1/chat/completions",
        "sim/echo:batch",
        chunks(
            [("r1", {"messages": [{"role": "user", "content": "a"}], "model": "x", "models": ["x", "y"]})],
            [("r2", {"messages": [{"role": "user", "content": "b"}], "temperature": 0})],
        ),
    )
    raw = body.content()
    body.close()
    assert key_order(raw) == ["endpoint", "model", "requests"]
    data = orjson.loads(raw)
    assert list(data) == ["endpoint", "model", "requests"]
    assert data["requests"] == [
        {"custom_id": "r1", "body": {"messages": [{"role": "user", "content": "a"}]}},
        {"custom_id": "r2", "body": {"messages": [{"role": "user", "content": "b"}], "temperature": 0}},
    ]
    assert body.lines == 2
    assert body.size == len(raw)


async def test_a_callback_url_comes_after_the_model_and_before_the_requests() -> None:
    body = await BatchBody.build(
        "/v1/embeddings", "sim/embed:batch", chunks([("r1", {"input": "x"})]), "https://hooks.example.com/b"
    )
    assert key_order(body.content()) == ["endpoint", "model", "callback_url", "requests"]
    body.close()


def test_a_batch_object_is_read_with_its_counts_cost_and_error() -> None:
    info = RemoteBatchInfo.of(
        {
            "id": "batch_1",
            "status": "failed",
            "model": "m:batch",
            "endpoint": "/v1/chat/completions",
            "created_at": 1782097200,
            "request_counts": {"total": 3, "completed": 1, "failed": 2},
            "usage": {"cost": 0.0125},
            "error": {"message": "no batch variant"},
            "results": None,
        }
    )
    assert (info.total, info.completed, info.failed, info.cost, info.error) == (
        3,
        1,
        2,
        Decimal("0.0125"),
        "no batch variant",
    )
    assert info.terminal
    with pytest.raises(ValueError, match="not a batch object"):
        RemoteBatchInfo.of({"object": "list"})


ANSWER = {
    "id": "gen-batch-1",
    "model": "sim/echo:batch",
    "provider": "SimProvider",
    "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "cost": 0.0000025},
}


def test_a_line_answered_is_a_success_with_its_usage_and_generation() -> None:
    outcome = line_outcome(
        "/v1/chat/completions",
        {"custom_id": "r1", "response": {"status_code": 200, "body": ANSWER}, "error": None},
    )
    assert isinstance(outcome, Success)
    assert (outcome.model, outcome.generation_id, outcome.content, outcome.usage.cost) == (
        "sim/echo:batch",
        "gen-batch-1",
        "hi",
        Decimal("0.0000025"),
    )


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ({"response": None, "error": {"type": "batch_expired", "message": "too late"}}, "batch_expired"),
        ({"response": {"status_code": 500, "body": {"error": {"code": 500, "message": "x"}}}}, "500"),
        ({"response": {"status_code": 400, "body": {"error": {"code": 400, "message": "x"}}}}, "400"),
        ({}, "batch_line_malformed"),
    ],
)
def test_a_failed_line_is_a_failure_with_its_code(line: dict[str, Any], code: str) -> None:
    outcome = line_outcome("/v1/chat/completions", {"custom_id": "r1", **line})
    assert isinstance(outcome, Failure)
    assert outcome.code == code


def test_an_embeddings_line_is_an_answer_when_it_holds_its_vectors() -> None:
    body = {
        "object": "list",
        "data": [{"embedding": [0.1]}],
        "model": "sim/embed:batch",
        "usage": {"cost": 0.001},
    }
    outcome = line_outcome("/v1/embeddings", {"response": {"status_code": 200, "body": body}})
    assert isinstance(outcome, Success)
    assert outcome.usage.cost == Decimal("0.001")


def test_the_slug_sent_is_the_batch_variant_when_listed_or_the_base_id_when_asked() -> None:
    assert batch_slug("openai/gpt-4o", True, "variant") == "openai/gpt-4o:batch"
    assert batch_slug("openai/gpt-4o", False, "variant") == "openai/gpt-4o"
    assert batch_slug("openai/gpt-4o:batch", False, "variant") == "openai/gpt-4o:batch"
    assert batch_slug("openai/gpt-4o", True, "base") == "openai/gpt-4o"
    assert batch_slug("openai/gpt-4o:batch", True, "base") == "openai/gpt-4o"


def test_auto_takes_models_with_a_variant_and_windows_that_leave_the_remote_day() -> None:
    assert batch_models({"a", "a:batch", "b", "c:batch"}) == {"a", "a:batch", "c:batch"}
    assert auto_has_room(None)
    assert not auto_has_room(24 * 3600)
    assert auto_has_room(AUTO_MIN_WINDOW_SECONDS)
    known = frozenset({"sim/echo", "sim/echo:batch", "sim/spare"})
    assert SubmitOptions(lane=Lane.AUTO, known_models=known).lane_takes() == (
        False,
        ["sim/echo", "sim/echo:batch"],
    )
    assert SubmitOptions(lane=Lane.AUTO, known_models=known, window_seconds=24 * 3600).lane_takes() == (
        False,
        [],
    )
    assert SubmitOptions(lane=Lane.AUTO, known_models=None).lane_takes() == (False, [])
    assert SubmitOptions(lane=Lane.BATCH, known_models=None).lane_takes() == (True, [])
    assert SubmitOptions(lane=Lane.LIVE, known_models=known).lane_takes() == (False, [])
    assert "lane" not in SubmitOptions().identity()
    assert SubmitOptions(lane=Lane.BATCH).identity()["lane"] == "batch"


# --- the lifecycle's statements of the batch lane, walked on Postgres --------------------------------------


async def lane_batch(engine: AsyncEngine, tmp_path: Path, n: int) -> str:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"c{i}", f"q{i}") for i in range(n)])
    options = SubmitOptions(models=["sim/echo"], new=True, lane=Lane.BATCH, max_attempts=2)
    return (await submit_file(engine, path, options)).batch_id


async def statuses(conn: AsyncConnection, batch_id: str) -> tuple[str, list[str]]:
    batch = (await conn.execute(text("SELECT status FROM batch WHERE id = :b"), {"b": batch_id})).scalar_one()
    requests = await conn.execute(
        text("SELECT status FROM request WHERE batch_id = :b ORDER BY id"), {"b": batch_id}
    )
    return str(batch), [str(s) for s in requests.scalars()]


async def remote_batch(conn: AsyncConnection, batch_id: str, request_ids: list[int]) -> int:
    rid = (
        await conn.execute(
            text(
                "INSERT INTO remote_batch (batch_id, model, endpoint, total, state)"
                " VALUES (:b, 'sim/echo:batch', '/v1/chat/completions', :n, 'running') RETURNING id"
            ),
            {"b": batch_id, "n": len(request_ids)},
        )
    ).scalar_one()
    await conn.execute(
        text("UPDATE request SET remote_batch_id = :r WHERE id = ANY(:ids)"), {"r": rid, "ids": request_ids}
    )
    return int(rid)


def line(request_id: int, batch_id: str, remote: int, outcome: Outcome = Outcome.SUCCESS) -> LineCall:
    call = CallRecord(outcome, http_status=200, model="sim/echo:batch", cost=Decimal("0.5"), prompt_tokens=3)
    return LineCall(request_id, batch_id, remote, "sim/echo:batch", "me", call)


async def test_lines_are_stored_once_and_what_a_remote_batch_leaves_goes_live(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    batch_id = await lane_batch(engine, tmp_path, 4)
    async with engine.begin() as conn:
        ids = list((await conn.execute(text("SELECT id FROM request ORDER BY id"))).scalars())
        assert await statuses(conn, batch_id) == ("in_progress", ["remote"] * 4)
        remote = await remote_batch(conn, batch_id, ids[:3])
        # An answer: the request completes with its result; the same line again changes nothing.
        assert await lifecycle.record_line_answer(conn, line(ids[0], batch_id, remote), "{}", "x", "stop")
        assert not await lifecycle.record_line_answer(conn, line(ids[0], batch_id, remote), "{}", "x", "stop")
        # A failed line: an attempt spent, the request live again (pending), and only once.
        failed = line(ids[1], batch_id, remote, Outcome.RETRY)
        kwargs = {"status": RequestStatus.PENDING, "failures": 1, "chain_pos": 0, "delay_seconds": 0.0}
        assert await lifecycle.record_line_failure(conn, failed, **kwargs) == "pending"
        assert await lifecycle.record_line_failure(conn, failed, **kwargs) is None
        # A request of another remote batch (or none) is not touched by this one's lines.
        assert not await lifecycle.record_line_answer(conn, line(ids[3], batch_id, remote), "{}", "x", "stop")
        # The remote batch is over: what it left goes live, unspent.
        assert await lifecycle.release_remote(conn, remote, "ended") == 1
        assert await statuses(conn, batch_id) == (
            "in_progress",
            ["completed", "pending", "pending", "remote"],
        )
        attempts = (
            await conn.execute(
                text("SELECT request_id, number, lane, outcome, cost FROM attempt ORDER BY id")
            )
        ).all()
        assert [tuple(a) for a in attempts] == [
            (ids[0], 1, "batch", "success", Decimal("0.5")),
            (ids[1], 1, "batch", "retry", Decimal("0.5")),
        ]
        # The batch is not done while a request waits for a remote batch.
        assert await lifecycle.finalize_batches(conn) == []
        tally = (
            await conn.execute(text("SELECT sum(remote), sum(pending), sum(completed) FROM batch_tally"))
        ).one()
        assert tuple(tally) == (1, 2, 1)
        lanes = (
            await conn.execute(
                text(
                    "SELECT lane, sum(answers), sum(calls) FROM batch_model_tally GROUP BY lane ORDER BY lane"
                )
            )
        ).all()
        assert [tuple(r) for r in lanes] == [("batch", 1, 2)]


async def test_the_lane_turned_off_sends_the_batch_live_and_notes_it_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    batch_id = await lane_batch(engine, tmp_path, 3)
    async with engine.begin() as conn:
        ids = list((await conn.execute(text("SELECT id FROM request ORDER BY id"))).scalars())
        remote = await remote_batch(conn, batch_id, ids[:1])
        await conn.execute(text("UPDATE remote_batch SET state = 'refused' WHERE id = :r"), {"r": remote})
        assert await lifecycle.lane_off(conn, batch_id, "not enabled") == (True, 3)
        assert await lifecycle.lane_off(conn, batch_id, "not enabled") == (False, 0)
        assert await statuses(conn, batch_id) == ("in_progress", ["pending"] * 3)
        note = (await conn.execute(text("SELECT lane_note FROM batch"))).scalar_one()
        assert note == "not enabled"


async def test_a_cancel_takes_the_requests_no_remote_batch_holds_and_waits_for_the_others(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    batch_id = await lane_batch(engine, tmp_path, 3)
    async with engine.begin() as conn:
        ids = list((await conn.execute(text("SELECT id FROM request ORDER BY id"))).scalars())
        remote = await remote_batch(conn, batch_id, ids[:1])
        cancelled = await lifecycle.cancel(conn, batch_id)
        assert (cancelled.batches, cancelled.requests) == (1, 2)
        assert await statuses(conn, batch_id) == ("cancelling", ["remote", "cancelled", "cancelled"])
        # Its remote batch still answers: the answer is kept (it is paid); then the batch is cancelled.
        assert await lifecycle.record_line_answer(conn, line(ids[0], batch_id, remote), "{}", "x", "stop")
        assert await lifecycle.finalize_batches(conn) == [batch_id]
        assert await statuses(conn, batch_id) == ("cancelled", ["completed", "cancelled", "cancelled"])


async def test_what_a_remote_batch_leaves_in_a_stopped_batch_is_cancelled(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    batch_id = await lane_batch(engine, tmp_path, 2)
    async with engine.begin() as conn:
        ids = list((await conn.execute(text("SELECT id FROM request ORDER BY id"))).scalars())
        remote = await remote_batch(conn, batch_id, ids)
        await lifecycle.cancel(conn, batch_id)
        failed = line(ids[0], batch_id, remote, Outcome.RETRY)
        kwargs = {"status": RequestStatus.PENDING, "failures": 1, "chain_pos": 0, "delay_seconds": 0.0}
        assert await lifecycle.record_line_failure(conn, failed, **kwargs) == "cancelled"
        assert await lifecycle.release_remote(conn, remote, "cancelled there") == 1
        assert await statuses(conn, batch_id) == ("cancelling", ["cancelled", "cancelled"])
        # A batch with a remote batch that may still run on OpenRouter cannot be deleted.
        assert await lifecycle.finalize_batches(conn) == [batch_id]
        assert await lifecycle.delete(conn, batch_id) is None
        await conn.execute(text("UPDATE remote_batch SET state = 'done'"))
        assert await lifecycle.delete(conn, batch_id) == 2


def test_the_python_front_and_the_cli_take_the_lane_by_name() -> None:
    from jobs.cli.options import SubmitChoices
    from jobs.core.errors import BadInput
    from jobs.core.settings import Settings
    from jobs.library.choices import Choices

    settings = Settings()
    assert Choices(models="sim/echo", lane="batch").options(settings, records=False).lane is Lane.BATCH
    assert Choices(models="sim/echo").options(settings, records=False).lane is Lane.LIVE
    with pytest.raises(BadInput, match="lane= must be one of live, batch, auto"):
        Choices(models="sim/echo", lane="cheap").options(settings, records=False)
    assert SubmitChoices(models="sim/echo", lane=Lane.AUTO).options(settings).lane is Lane.AUTO
