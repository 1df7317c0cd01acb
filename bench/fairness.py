"""Benchmark: a small batch behind a large one, beside the same small batch alone, this checkout and a baseline.

One worker (concurrency 16) against the simulator, every call taking 200 ms, a scratch database per case:

- paced: the large batch is 150 requests to a free model, paced by the simulator's free tier (20 a minute on a
  clock ten times faster: one every 0.3 s), the small one 30 requests to a paid model submitted 3 s later;
- plentiful: the large batch is 3,000 paid requests, the small one 30 more paid ones submitted 3 s later.

For each: seconds from the small batch's submit to its last answer, alone and behind the large batch, and the
large batch's answers per second while the small one ran beside its rate before.

`--many`: 100,000 requests in 50 batches of 2,000 (every batch its own owner, as command-line batches are), two
workers of concurrency 32, calls answered at once: answers per second over each tenth of the work, so a scheduler
whose cost grows with the work or the batches shows as a falling rate.

    uv run python bench/fairness.py [--baseline 829ca1f] [--many]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Code, Simulator, baseline_tree, code_database, machine

SMALL = 30
CONCURRENCY = 16


def _write(path: Path, prefix: str, count: int) -> Path:
    with path.open("wb") as f:
        for i in range(count):
            line = {"custom_id": f"{prefix}{i}", "messages": [{"role": "user", "content": f"{prefix} {i}"}]}
            f.write(orjson.dumps(line) + b"\n")
    return path


async def _completed(url: str, batch_id: str) -> int:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM request WHERE batch_id = $1 AND status = 'completed'", batch_id
            )
        )
    finally:
        await connection.close()


def _wait_done(url: str, batch_id: str, total: int, limit: float) -> float:
    """Seconds until `total` requests of the batch are completed (or `limit`, then a `>` figure)."""
    started = time.monotonic()
    while asyncio.run(_completed(url, batch_id)) < total:
        if time.monotonic() - started > limit:
            return float("inf")
        time.sleep(0.05)
    return time.monotonic() - started


def one(code: Code, large: int, large_model: str, behind: bool, limit: float) -> tuple[float, float, float]:
    """The small batch's seconds to done (alone, or behind the large one), and the large one's rates."""
    folder = Path(tempfile.mkdtemp(prefix="orbatch-bench-fair-"))
    simulator = Simulator("--latency-ms", "200", "--speed", "10", "--no-free-tier")
    try:
        with code_database(code, simulator.base_url, ORBATCH_FEED_INTERVAL="0.1") as (url, env):
            worker = code.worker(env, "--concurrency", str(CONCURRENCY))
            try:
                before = during = 0.0
                big_id = ""
                if behind:
                    big = _write(folder / "large.jsonl", "l", large)
                    big_id = code.cli(env, "submit", str(big), "--models", large_model).stdout.strip()
                    time.sleep(3)
                    before = asyncio.run(_completed(url, big_id)) / 3
                small = _write(folder / "small.jsonl", "s", SMALL)
                started_large = asyncio.run(_completed(url, big_id)) if behind else 0
                submitted = time.monotonic()
                small_id = code.cli(env, "submit", str(small), "--models", "sim/echo").stdout.strip()
                if _wait_done(url, small_id, SMALL, limit) == float("inf"):
                    seconds = float("inf")
                else:
                    seconds = time.monotonic() - submitted
                if behind:
                    elapsed = time.monotonic() - submitted
                    during = (asyncio.run(_completed(url, big_id)) - started_large) / elapsed
                return seconds, before, during
            finally:
                worker.terminate()
                worker.wait(30)
    finally:
        simulator.stop()


def many(code: Code, batches: int = 50, each: int = 2000) -> list[float]:
    """Answers per second over each tenth of `batches` x `each` requests, worked by two workers."""
    folder = Path(tempfile.mkdtemp(prefix="orbatch-bench-many-"))
    simulator = Simulator()
    try:
        with code_database(code, simulator.base_url) as (url, env):
            ids = [
                code.cli(
                    env, "submit", str(_write(folder / f"b{i}.jsonl", f"b{i}-", each)), "--models", "sim/echo"
                ).stdout.strip()
                for i in range(batches)
            ]
            total = batches * each
            workers = [code.worker(env, "--concurrency", "32") for _ in range(2)]
            try:
                rates: list[float] = []
                mark, last = time.monotonic(), 0
                for tenth in range(1, 11):
                    while (done := asyncio.run(_all_completed(url, ids))) < total * tenth // 10:
                        time.sleep(0.2)
                    now = time.monotonic()
                    rates.append((done - last) / (now - mark))
                    mark, last = now, done
                return rates
            finally:
                for worker in workers:
                    worker.terminate()
                    worker.wait(30)
    finally:
        simulator.stop()


async def _all_completed(url: str, batch_ids: list[str]) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(
            await connection.fetchval(
                # The maintained tallies (both codes keep them): a count over the request table every 0.2 s
                # would itself take Postgres from the workers.
                "SELECT coalesce(sum(completed), 0) FROM batch_tally WHERE batch_id = ANY($1)",
                batch_ids,
            )
        )
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="829ca1f", help="the commit to compare with")
    parser.add_argument("--limit", type=float, default=120.0, help="seconds to wait for the small batch")
    parser.add_argument(
        "--many", action="store_true", help="100,000 requests in 50 batches: the rate as it goes"
    )
    options = parser.parse_args()
    print(machine())
    codes = [
        Code("this checkout", ROOT),
        Code(f"baseline {options.baseline}", baseline_tree(options.baseline)),
    ]
    if options.many:
        print("code | answers/s over each tenth of 100,000 requests in 50 batches")
        for code in codes:
            print(f"{code.name} | " + " ".join(f"{r:.0f}" for r in many(code)))
        return
    print(
        "case | code | small alone, s | small behind large, s | large before, req/s | large beside small, req/s"
    )
    for case, large, model in (("paced", 150, "sim/echo:free"), ("plentiful", 3000, "sim/echo")):
        for code in codes:
            alone, _, _ = one(code, large, model, behind=False, limit=options.limit)
            behind, before, during = one(code, large, model, behind=True, limit=options.limit)
            shown = f"> {options.limit:.0f}" if behind == float("inf") else f"{behind:.2f}"
            print(f"{case} | {code.name} | {alone:.2f} | {shown} | {before:.1f} | {during:.1f}")


if __name__ == "__main__":
    main()
