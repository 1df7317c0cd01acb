"""Benchmark: submitting a large JSONL file and exporting a large batch, with baselines from the same run.

- ingest: `submit` of N lines (parse, validate, count prompt tokens, COPY, INSERT…SELECT, one transaction):
  lines/s and peak RSS, at N and at N/10 to show memory does not grow with the file; and at N/10 for an OpenAI
  model, whose prompts are counted with its own tokenizer (o200k_base) rather than approximated from bytes.
  Baselines: reading and parsing the file with orjson alone, and a bare asyncpg COPY of the raw lines into a
  one-column table.
- export: `results` of N stored results: lines/s and peak RSS. Baseline: a bare asyncpg
  `COPY (SELECT body::text …) TO STDOUT` into a file.
Each measured step runs in a fresh process so its peak RSS is its own.

    uv run python bench/ingest.py [--lines 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, fake_results, machine, scratch_database

_CHILD = r"""
import asyncio, resource, sys, time
from pathlib import Path
step, url, path = sys.argv[1], sys.argv[2], Path(sys.argv[3])

async def main():
    import asyncpg, orjson
    from jobs.core.db import create_engine
    started = time.perf_counter()
    if step == "submit":
        from jobs.submission.submit import SubmitOptions, submit_file
        engine = create_engine(url, pool_size=1)
        model = sys.argv[4] if len(sys.argv) > 4 else "sim/echo"
        report = await submit_file(engine, path, SubmitOptions(models=[model], new=True))
        await engine.dispose()
        count = report.total
    elif step == "parse":
        count = 0
        with path.open("rb") as f:
            for line in f:
                orjson.loads(line)
                count += 1
    elif step == "copy":
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TEMP TABLE raw (line text)")
        with path.open("rb") as f:
            await conn.copy_to_table("raw", source=f, columns=["line"], format="text")
        count = await conn.fetchval("SELECT count(*) FROM raw")
        await conn.close()
    elif step == "export":
        from jobs.operations.results import export_results
        engine = create_engine(url, pool_size=1)
        batch = sys.argv[4]
        with path.open("wb") as out:
            report = await export_results(engine, batch, out, None)
        await engine.dispose()
        count = report.completed
    elif step == "dump":
        conn = await asyncpg.connect(url)
        with path.open("wb") as out:
            await conn.copy_from_query("SELECT body::text FROM result ORDER BY request_id", output=out)
        count = await conn.fetchval("SELECT count(*) FROM result")
        await conn.close()
    elapsed = time.perf_counter() - started
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report this script's own peak.
    peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(count, elapsed, peak_kb)

asyncio.run(main())
"""


def step(name: str, url: str, path: Path, *extra: str) -> tuple[int, float, float]:
    """(lines, seconds, peak RSS in MB) of one step in a fresh process."""
    done = subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-c", _CHILD, name, url, str(path), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    count, seconds, rss = done.stdout.split()
    return int(count), float(seconds), int(rss) / 1024


def write_file(path: Path, lines: int) -> None:
    with path.open("wb") as f:
        for i in range(lines):
            f.write(
                orjson.dumps(
                    {
                        "custom_id": f"row-{i}",
                        "messages": [
                            {
                                "role": "system",
                                "content": "Label the sentiment: positive, negative or neutral.",
                            },
                            {
                                "role": "user",
                                "content": f"Review number {i}: the product arrived on time and works well.",
                            },
                        ],
                        "max_tokens": 5,
                    }
                )
                + b"\n"
            )


def checkpoint(url: str) -> None:
    """Ask Postgres to write its dirty buffers now (needs superuser; skipped quietly without)."""
    subprocess.run(["psql", "-q", url, "-c", "CHECKPOINT"], check=False, capture_output=True)  # noqa: S603 - argv built here, no shell


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the full-size submit (median shown)")
    args = parser.parse_args()
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    big, small = out / "ingest-big.jsonl", out / "ingest-small.jsonl"
    write_file(big, args.lines)
    write_file(small, max(1, args.lines // 10))
    print(f"machine: {machine()}")
    print(f"file: {args.lines} lines, {big.stat().st_size / 1e6:.0f} MB")
    print()
    with scratch_database() as url:
        rows: list[tuple[str, tuple[int, float, float]]] = [
            ("baseline: read + orjson.loads only", step("parse", url, big)),
            ("baseline: bare asyncpg COPY of raw lines", step("copy", url, big)),
            (f"orbatch submit, {args.lines // 10} lines", step("submit", url, small)),
            (
                f"orbatch submit, {args.lines // 10} lines, openai/gpt-4o-mini",
                step("submit", url, small, "openai/gpt-4o-mini"),
            ),
        ]
        # The full-size submit is dominated by Postgres writing a million rows, which a checkpoint landing in
        # the middle slows by a third on this machine: each run starts after one, and the median is shown.
        runs = []
        for _ in range(max(1, args.repeat)):
            checkpoint(url)
            runs.append(step("submit", url, big))
        runs.sort(key=lambda r: r[1])
        rows.append((f"orbatch submit, {args.lines} lines (median of {len(runs)})", runs[len(runs) // 2]))
        print(f"{'ingest':52} {'lines/s':>10} {'seconds':>8} {'peak RSS MB':>12}")
        for name, (count, seconds, rss) in rows:
            print(f"{name:52} {count / seconds:10,.0f} {seconds:8.1f} {rss:12.0f}")
        print(f"  full-size runs: {', '.join(f'{c / s:,.0f}' for c, s, _ in runs)} lines/s")
        import asyncio

        import asyncpg

        async def last_batch() -> str:
            conn = await asyncpg.connect(url)
            try:
                return str(await conn.fetchval("SELECT id FROM batch ORDER BY created_at DESC LIMIT 1"))
            finally:
                await conn.close()

        batch_id = asyncio.run(last_batch())
        started = time.perf_counter()
        fake_results(url, batch_id)
        print(
            f"\n(stored {args.lines} fake results in {time.perf_counter() - started:.0f} s for the export)\n"
        )
        exports = [
            ("baseline: bare asyncpg COPY of result bodies", step("dump", url, out / "dump.txt")),
            ("orbatch results", step("export", url, out / "export.jsonl", batch_id)),
        ]
        print(f"{'export':52} {'lines/s':>10} {'seconds':>8} {'peak RSS MB':>12}")
        for name, (count, seconds, rss) in exports:
            print(f"{name:52} {count / seconds:10,.0f} {seconds:8.1f} {rss:12.0f}")


if __name__ == "__main__":
    main()
