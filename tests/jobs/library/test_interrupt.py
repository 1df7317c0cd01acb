"""An interrupted `orbatch.run` keeps its batch, and the same call again carries on, calling nothing twice."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import TEST_API_KEY, Simulator, start_job, until

SCRIPT = """
import sys

import pandas as pd
import orbatch

frame = pd.DataFrame({"id": range(40), "text": [f"review {i}" for i in range(40)]})
try:
    out = orbatch.run(frame, template="Label this review: {text}", models="meta-llama/llama-3.3-70b-instruct:free",
                      concurrency=4, progress="plain")
except KeyboardInterrupt as exc:
    print(f"KeyboardInterrupt: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(130)
print(f"answered {out['answer'].notna().sum()} of {len(out)}", file=sys.stderr, flush=True)
"""


async def _count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


@pytest.mark.slow
async def test_an_interrupted_run_keeps_its_batch_and_the_same_call_again_calls_nothing_twice(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=300)
    script = tmp_path / "label.py"
    script.write_text(textwrap.dedent(SCRIPT))
    job_env = {**env, "ORBATCH_DATA_DIR": str(tmp_path / "data")}
    process, lines = start_job(job_env, str(script))
    try:
        await until(
            lambda: _count(engine, "SELECT count(*) FROM request WHERE status = 'completed'"),
            "some rows answered",
        )
        # What a terminal's Ctrl-C does: SIGINT to the whole foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        said = lines.rest(seconds=60)
        assert process.wait(60) == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        assert process.stderr is not None
        process.stderr.close()
    assert "is kept" in said
    assert "calls in flight finish first" in said or "KeyboardInterrupt" in said
    done_at_stop = await _count(engine, "SELECT count(*) FROM request WHERE status = 'completed'")
    assert 0 < done_at_stop < 40
    # Nothing was left half done: no request running, no call in flight, the batch waits for this call.
    assert await _count(engine, "SELECT count(*) FROM request WHERE status = 'running'") == 0
    assert await _count(engine, "SELECT count(*) FROM batch WHERE pause_reason = 'interrupted'") == 1

    again, again_lines = start_job(job_env, str(script))
    try:
        assert again.wait(120) == 0
        said_again = again_lines.rest()
        assert "answered 40 of 40" in said_again
    finally:
        assert again.stderr is not None
        again.stderr.close()
    # The key is in the environment of both runs, and in nothing they said or left in the data dir.
    assert TEST_API_KEY not in said + said_again
    for left in (tmp_path / "data").rglob("*"):
        assert not left.is_file() or TEST_API_KEY.encode() not in left.read_bytes(), left
    answered = [c for c in await simulator.calls() if c.get("status", 200) == 200]
    prompts = [c["body"]["messages"][-1]["content"] for c in answered]
    assert sorted(prompts) == sorted(f"Label this review: review {i}" for i in range(40))
