"""Submission: all or nothing, line order kept, models resolved, large files streamed in chunks."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.models import Batch, Request
from jobs.submission.submit import STAGING_COPY_CHUNK, SubmitError, SubmitOptions, submit_file
from tests.support import ROOT, chat_line, write_jsonl


async def count(engine: AsyncEngine, model: type[Batch] | type[Request]) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model))).scalar_one())


async def test_a_file_with_bad_lines_is_rejected_whole_with_every_line_named(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            chat_line("a", "one"),
            b"{broken",
            chat_line("b", "two"),
            chat_line("a", "again"),
            {"custom_id": "c", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
        ],
    )
    with pytest.raises(SubmitError) as caught:
        await submit_file(engine, path, SubmitOptions(models=["sim/echo"]))
    messages = [str(e) for e in caught.value.errors]
    assert messages[0].startswith("LINE 2: not valid JSON")
    assert messages[1] == 'LINE 4: duplicate custom_id "a" (first on line 1)'
    assert messages[2] == 'LINE 5: "temperature" must be a number, got a string'
    assert caught.value.invalid == 3
    assert "nothing was queued" in caught.value.reason
    assert await count(engine, Batch) == 0
    assert await count(engine, Request) == 0


async def test_skip_invalid_queues_the_good_lines_and_keeps_the_first_of_a_duplicate(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", [chat_line("a", "one"), b"[]", chat_line("a", "dup"), chat_line("b", "two")]
    )
    report = await submit_file(engine, path, SubmitOptions(models=["sim/echo"], skip_invalid=True))
    assert (report.total, report.invalid) == (2, 2)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Request.custom_id, Request.line_no).order_by(Request.id))).all()
        batch = (await conn.execute(select(Batch))).one()
    assert [tuple(r) for r in rows] == [("a", 1), ("b", 4)]
    assert (batch.status, batch.total, batch.invalid_lines) == ("in_progress", 2, 2)


async def test_requests_keep_line_order_and_their_own_model_chains(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            chat_line("z", "1"),
            chat_line("y", "2", model="sim/backup"),
            chat_line("x", "3", models=["sim/spare", "sim/echo"]),
        ],
    )
    report = await submit_file(engine, path, SubmitOptions(models=["sim/echo:free", "sim/echo"]))
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(Request.custom_id, Request.models, Request.body).order_by(Request.id))
        ).all()
        batch = (await conn.execute(select(Batch).where(Batch.id == report.batch_id))).one()
    assert [r.custom_id for r in rows] == ["z", "y", "x"]
    assert [r.models for r in rows] == [None, ["sim/backup"], ["sim/spare", "sim/echo"]]
    assert "model" not in rows[1].body
    assert "custom_id" not in rows[0].body
    assert batch.models == ["sim/echo:free", "sim/echo"]
    assert len(batch.source_sha256 or "") == 64


async def test_a_line_without_any_model_is_a_bad_line(engine: AsyncEngine, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x", model="sim/echo"), chat_line("b", "y")])
    with pytest.raises(SubmitError) as caught:
        await submit_file(engine, path, SubmitOptions())
    assert [str(e) for e in caught.value.errors] == [
        "LINE 2: no model: give the batch a model chain (--models, or `models` through the API) or the line a"
        ' "model" or "models"'
    ]


async def test_an_empty_file_is_refused(engine: AsyncEngine, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n\n")
    with pytest.raises(SubmitError, match="no requests in the file"):
        await submit_file(engine, path, SubmitOptions(models=["sim/echo"]))
    assert await count(engine, Batch) == 0


async def test_a_file_larger_than_one_copy_chunk_is_stored_whole(engine: AsyncEngine, tmp_path: Path) -> None:
    n = STAGING_COPY_CHUNK * 2 + 17
    path = write_jsonl(tmp_path / "big.jsonl", (chat_line(f"r{i}", f"text {i}") for i in range(n)))
    report = await submit_file(engine, path, SubmitOptions(models=["sim/echo"]))
    assert report.total == n
    async with engine.connect() as conn:
        last = (
            await conn.execute(
                select(Request.custom_id, Request.line_no).order_by(Request.id.desc()).limit(1)
            )
        ).one()
    assert tuple(last) == (f"r{n - 1}", n)


def _peak_rss_mb_of_submit(env: dict[str, str], path: Path) -> float:
    code = (
        "import asyncio, resource, sys\n"
        "from pathlib import Path\n"
        "from jobs.core.db import create_engine\n"
        "from jobs.submission.submit import SubmitOptions, submit_file\n"
        "async def go():\n"
        "    engine = create_engine(sys.argv[1], pool_size=1)\n"
        "    await submit_file(engine, Path(sys.argv[2]), SubmitOptions(models=['sim/echo']))\n"
        "    await engine.dispose()\n"
        "asyncio.run(go())\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the parent's peak.
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    done = subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-c", code, env["DATABASE_URL"], str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
async def test_submit_memory_does_not_grow_with_the_file(env: dict[str, str], tmp_path: Path) -> None:
    small = write_jsonl(tmp_path / "small.jsonl", (chat_line(f"r{i}", "x" * 200) for i in range(10_000)))
    large = write_jsonl(tmp_path / "large.jsonl", (chat_line(f"r{i}", "x" * 200) for i in range(150_000)))
    small_mb = _peak_rss_mb_of_submit(env, small)
    large_mb = _peak_rss_mb_of_submit(env, large)
    # 15x the lines (about 40 MB more input) may not cost more than a few MB of peak memory.
    assert large_mb < small_mb + 15, (small_mb, large_mb)


def _huge_lines(path: Path, count: int, size: int, compressed: bool) -> Path:
    # Lines that differ, so neither gzip nor the staging table sees one line repeated.
    opener = gzip.open if compressed else open
    with opener(path, "wb") as f:
        for i in range(count):
            text = (f"line {i} " * (size // 8 + 1))[:size]
            f.write(orjson.dumps(chat_line(f"big-{i}", text)) + b"\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("count", "mib", "compressed"),
    [(400, 2, False), (400, 2, True), (20, 15, False), (20, 15, True)],
    ids=["400x2MiB", "400x2MiB.gz", "20x15MiB", "20x15MiB.gz"],
)
async def test_submit_memory_is_bounded_by_bytes_for_lines_of_many_megabytes(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path, count: int, mib: int, compressed: bool
) -> None:
    path = _huge_lines(tmp_path / ("in.jsonl.gz" if compressed else "in.jsonl"), count, mib << 20, compressed)
    peak = _peak_rss_mb_of_submit(env, path)
    assert peak < 250, f"submit of {count} lines of {mib} MiB peaked at {peak:.0f} MB"
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT count(*) FROM request"))).scalar_one()
    assert stored == count


async def test_a_large_submit_refreshes_the_planners_statistics_and_a_small_one_does_not(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        # Whatever other tests left in this database, this submit is a large share of it.
        monkeypatch.setattr("jobs.submission.submit.RESTAT_SHARE", 0.0)
        large = write_jsonl(tmp_path / "large.jsonl", [chat_line(f"r{i}", "x") for i in range(1000)])
        await submit_file(engine, large, SubmitOptions(models=["sim/echo"]))
        assert seen.count("ANALYZE request") == 1
        small = write_jsonl(tmp_path / "small.jsonl", [chat_line(f"s{i}", "x") for i in range(10)])
        await submit_file(engine, small, SubmitOptions(models=["sim/echo"]))
        assert seen.count("ANALYZE request") == 1
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    async with engine.connect() as conn:
        analyzed = (
            await conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'request'::regclass"))
        ).scalar_one()
    assert analyzed >= 1000
