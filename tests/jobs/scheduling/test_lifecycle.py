"""The lifecycle: every status change in one module, its table true to its statements, and a few moves walked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.core.states import BatchStatus, Outcome, RequestStatus
from jobs.scheduling import lifecycle
from jobs.scheduling.lifecycle import CallRecord, Lease
from jobs.submission.submit import SubmitOptions, submit_file
from tests.support import chat_line, write_jsonl

ROOT = Path(__file__).resolve().parents[3]
LIFECYCLE = ROOT / "jobs" / "scheduling" / "lifecycle.py"

# An UPDATE of a request or a batch whose SET clause (up to its WHERE or FROM) assigns `status`; a DELETE of a
# batch (the end of its lifecycle); SQLAlchemy's `update(Batch)` / `update(Request)` given a `status=` value.
_SQL_UPDATE = re.compile(
    r"UPDATE\s+(?:request|batch)\b(?:\s+\w+)?\s+SET\b(.*?)(?:\bWHERE\b|\bFROM\b)", re.I | re.S
)
_SQL_DELETE = re.compile(r"DELETE\s+FROM\s+(?:request|batch)\b", re.I)
_ORM_UPDATE = re.compile(r"update\(\s*(?:Batch|Request)\s*\)(.*?)\)\s*\)", re.S)
_SETS_STATUS = re.compile(r"(?<![\w.])status\s*=")


def status_changes(source: str) -> Iterator[str]:
    """The status-changing statements this source holds, each as its first line."""
    for match in _SQL_UPDATE.finditer(source):
        if _SETS_STATUS.search(match.group(1)):
            yield match.group(0).splitlines()[0]
    for match in _SQL_DELETE.finditer(source):
        yield match.group(0)
    for match in _ORM_UPDATE.finditer(source):
        if _SETS_STATUS.search(match.group(1)):
            yield match.group(0).splitlines()[0]


def test_every_status_changing_statement_lives_in_the_lifecycle_module() -> None:
    # The service's packages; the tests and bench/ set rows in a state directly, to start from it.
    found = {
        str(path.relative_to(ROOT)): list(status_changes(path.read_text()))
        for package in ("jobs", "worker")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != LIFECYCLE
    }
    assert {where: hits for where, hits in found.items() if hits} == {}
    # The search finds them where they are: one or more in each of the lifecycle's statements.
    assert len(list(status_changes(LIFECYCLE.read_text()))) >= len(lifecycle.STATUS_STATEMENTS)


def test_the_table_names_every_statement_and_holds_to_what_each_does() -> None:
    functions = {t.function for t in lifecycle.TRANSITIONS}
    assert functions == set(lifecycle.STATUS_STATEMENTS)
    assert functions <= set(lifecycle.__all__)
    for transition in lifecycle.TRANSITIONS:
        texts = " ".join(s.text for s in lifecycle.STATUS_STATEMENTS[transition.function])
        assert any(status_changes(texts)) or "lease_expires_at" in texts, transition
        for state in transition.was:
            assert f"'{state}'" in texts, (transition.function, "was", state)
        for state in transition.became:
            if state == lifecycle.DELETED:
                assert "DELETE FROM batch" in texts, transition.function
            else:
                # A state given by the caller (the retry policy's) comes in as `:status`.
                assert f"'{state}'" in texts or "ELSE :status" in texts, (
                    transition.function,
                    "became",
                    state,
                )


def test_the_design_notes_show_the_same_table() -> None:
    notes = (Path(__file__).resolve().parents[3] / "docs" / "design.md").read_text()
    assert lifecycle.TRANSITIONS_TABLE.strip() in notes


def test_every_state_is_reached_and_every_request_state_left_but_the_finished_ones() -> None:
    born = {(subject, state) for subject, state, _ in lifecycle.BIRTHS}
    reached = born | {(t.subject, s) for t in lifecycle.TRANSITIONS for s in t.became}
    left = {(t.subject, s) for t in lifecycle.TRANSITIONS for s in t.was}
    # `finalizing` is OpenAI's word, kept for the API; nothing here makes it.
    batch_states = {s.value for s in BatchStatus} - {BatchStatus.FINALIZING.value}
    assert {s for subject, s in reached if subject == "batch"} >= batch_states
    assert {s for subject, s in reached if subject == "request"} == {s.value for s in RequestStatus}
    # A failed request is retried and a cancelled one may still take its late answer; a completed one stays.
    assert {s for subject, s in left if subject == "request"} == {s.value for s in RequestStatus} - {
        "completed"
    }


async def test_the_triggers_are_the_ones_named_and_none_changes_a_status(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        triggers = set(
            (await conn.execute(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"))).scalars()
        )
        bodies = (
            await conn.execute(
                text(
                    "SELECT p.proname, p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
                    " WHERE NOT t.tgisinternal"
                )
            )
        ).all()
    assert triggers == set(lifecycle.TRIGGERS)
    assert {name: list(status_changes(body)) for name, body in bodies if any(status_changes(body))} == {}


# --- a few transitions walked on Postgres ---------------------------------------------------------------------


async def new_batch(engine: AsyncEngine, tmp_path: Path, n: int) -> str:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"c{i}", f"q{i}") for i in range(n)])
    return (await submit_file(engine, path, SubmitOptions(models=["sim/echo"], new=True))).batch_id


async def states(conn: AsyncConnection, batch_id: str) -> tuple[str, list[str]]:
    batch = (await conn.execute(text("SELECT status FROM batch WHERE id = :b"), {"b": batch_id})).scalar_one()
    requests = await conn.execute(
        text("SELECT status FROM request WHERE batch_id = :b ORDER BY id"), {"b": batch_id}
    )
    return str(batch), [str(s) for s in requests.scalars()]


async def lease(conn: AsyncConnection, batch_id: str, nth: int) -> Lease:
    request_id = (
        await conn.execute(
            text("SELECT id FROM request WHERE batch_id = :b ORDER BY id OFFSET :n LIMIT 1"),
            {"b": batch_id, "n": nth},
        )
    ).scalar_one()
    taken = await lifecycle.take_lease(conn, request_id, 0, "me", 30, simulated=False)
    assert taken is not None
    return taken


ANSWER = CallRecord(Outcome.SUCCESS, latency_ms=5, http_status=200, model="sim/echo", cost=Decimal("0.01"))
ERROR = CallRecord(Outcome.RETRY, latency_ms=5, http_status=500, error_code="http_500", error_message="boom")


async def test_cancel_leaves_running_requests_to_end_as_their_calls_do_then_the_batch_is_cancelled(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    batch_id = await new_batch(engine, tmp_path, 3)
    async with engine.begin() as conn:
        answered, failing = await lease(conn, batch_id, 0), await lease(conn, batch_id, 1)
        assert await states(conn, batch_id) == ("in_progress", ["running", "running", "pending"])
        cancelled = await lifecycle.cancel(conn, batch_id)
        assert (cancelled.batches, cancelled.requests) == (1, 1)
        # Calls in flight run on: the batch waits for them.
        assert await states(conn, batch_id) == ("cancelling", ["running", "running", "cancelled"])
        assert await lifecycle.finalize_batches(conn) == []
        # The answer paid for is kept; the failure that would run its request again cancels it instead.
        assert await lifecycle.record_answer(conn, answered, ANSWER, '{"id": "x"}', "x", "stop")
        moved = await lifecycle.record_failure(
            conn,
            failing,
            "me",
            ERROR,
            status=RequestStatus.PENDING,
            failures=1,
            chain_pos=0,
            delay_seconds=0.0,
            park_reason=None,
            resume_at=None,
        )
        assert (moved.moved, moved.recorded, moved.paused) == (True, True, None)
        assert await states(conn, batch_id) == ("cancelling", ["completed", "cancelled", "cancelled"])
        assert await lifecycle.finalize_batches(conn) == [batch_id]
        assert await states(conn, batch_id) == ("cancelled", ["completed", "cancelled", "cancelled"])


async def test_an_expired_lease_goes_back_to_pending_and_a_late_answer_still_completes_it(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    batch_id = await new_batch(engine, tmp_path, 1)
    async with engine.begin() as conn:
        taken = await lease(conn, batch_id, 0)
        await conn.execute(
            text("UPDATE request SET lease_expires_at = now() - interval '1 second' WHERE id = :r"),
            {"r": taken.request_id},
        )
        assert await lifecycle.expire_leases(conn) == 1
        assert await states(conn, batch_id) == ("in_progress", ["pending"])
        outcome = text("SELECT outcome FROM attempt WHERE id = :a")
        assert (await conn.execute(outcome, {"a": taken.attempt_id})).scalar_one() == "abandoned"
        # The worker that lost the lease can no longer move it; its answer, paid for, still counts.
        assert not await lifecycle.renew_lease(conn, taken.request_id, "me", 30)
        assert await lifecycle.record_answer(conn, taken, ANSWER, '{"id": "x"}', "x", "stop")
        assert (await conn.execute(outcome, {"a": taken.attempt_id})).scalar_one() == "success"
        assert await lifecycle.finalize_batches(conn) == [batch_id]
        assert await states(conn, batch_id) == ("completed", ["completed"])


async def test_a_failed_request_retried_runs_again_from_a_fresh_start_and_reopens_its_batch(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    batch_id = await new_batch(engine, tmp_path, 2)
    async with engine.begin() as conn:
        answered, failed = await lease(conn, batch_id, 0), await lease(conn, batch_id, 1)
        assert await lifecycle.record_answer(conn, answered, ANSWER, '{"id": "x"}', "x", "stop")
        await lifecycle.record_failure(
            conn,
            failed,
            "me",
            ERROR,
            status=RequestStatus.FAILED,
            failures=3,
            chain_pos=1,
            delay_seconds=0.0,
            park_reason=None,
            resume_at=None,
        )
        assert await lifecycle.finalize_batches(conn) == [batch_id]
        assert await states(conn, batch_id) == ("completed", ["completed", "failed"])
        assert await lifecycle.retry_failed(conn, batch_id) == 1
        assert await states(conn, batch_id) == ("in_progress", ["completed", "pending"])
        row = (
            await conn.execute(
                text("SELECT failures, chain_pos, finished_at FROM request WHERE id = :r"),
                {"r": failed.request_id},
            )
        ).one()
        assert tuple(row) == (0, 0, None)
        # Retried, it is leased again as its next attempt.
        again = await lifecycle.take_lease(conn, failed.request_id, 1, "me", 30, simulated=False)
        assert again is not None
        assert again.number == 2
