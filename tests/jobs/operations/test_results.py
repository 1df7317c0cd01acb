"""Export: results in line order, in memory that does not grow with the batch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.submission.submit import SubmitOptions, submit_file
from tests.support import ROOT, chat_line, write_jsonl

_ANSWER_ALL = """
INSERT INTO attempt (request_id, batch_id, number, models_sent, outcome, model, generation_id, http_status)
SELECT id, batch_id, 1, '{sim/echo}', 'success', 'sim/echo', 'gen-' || id, 200 FROM request WHERE batch_id = :b;
"""
_RESULTS = """
INSERT INTO result (request_id, attempt_id, body, content, finish_reason, model)
SELECT a.request_id, a.id, jsonb_build_object('id', a.generation_id, 'filler', repeat('x', 400)), 'ok', 'stop', 'sim/echo'
FROM attempt a WHERE a.batch_id = :b;
"""

_EXPORT = (
    "import asyncio, resource, sys\n"
    "from jobs.core.db import create_engine\n"
    "from jobs.operations.results import export_results\n"
    "async def go():\n"
    "    engine = create_engine(sys.argv[1], pool_size=1)\n"
    "    with open(sys.argv[3], 'wb') as out:\n"
    "        report = await export_results(engine, sys.argv[2], out, None)\n"
    "    await engine.dispose()\n"
    "    print(report.completed)\n"
    "asyncio.run(go())\n"
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the parent's peak.
    "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
)


async def answered_batch(engine: AsyncEngine, tmp_path: Path, n: int) -> str:
    path = write_jsonl(tmp_path / f"in-{n}.jsonl", (chat_line(f"r{i}", f"q{i}") for i in range(n)))
    batch_id = (await submit_file(engine, path, SubmitOptions(models=["sim/echo"]))).batch_id
    async with engine.begin() as conn:
        await conn.execute(text(_ANSWER_ALL), {"b": batch_id})
        await conn.execute(text(_RESULTS), {"b": batch_id})
        await conn.execute(
            text("UPDATE request SET status = 'completed' WHERE batch_id = :b"), {"b": batch_id}
        )
    return batch_id


async def export_in_subprocess(env: dict[str, str], batch_id: str, out: Path) -> tuple[int, float]:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _EXPORT, env["DATABASE_URL"], batch_id, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    count, rss_kb = done.stdout.split()
    return int(count), int(rss_kb) / 1024


@pytest.mark.slow
async def test_export_memory_does_not_grow_with_the_batch(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    small = await answered_batch(engine, tmp_path, 5_000)
    large = await answered_batch(engine, tmp_path, 60_000)
    small_count, small_mb = await export_in_subprocess(env, small, tmp_path / "small.jsonl")
    large_count, large_mb = await export_in_subprocess(env, large, tmp_path / "large.jsonl")
    assert (small_count, large_count) == (5_000, 60_000)
    # Twelve times the results (about 30 MB more output) may not cost more than a few MB of peak memory.
    assert large_mb < small_mb + 15, (small_mb, large_mb)
    ids = [
        line.split(b'"custom_id":"r', 1)[1].split(b'"', 1)[0]
        for line in (tmp_path / "large.jsonl").read_bytes().splitlines()
    ]
    assert ids == [str(i).encode() for i in range(60_000)]
