"""Benchmark: a large DataFrame in and out through `import orbatch`, beside the CLI on the same rows as JSONL.

- in: `orbatch.submit(frame, template=…)` of N rows (records spooled as JSONL a chunk at a time, then the
  intake): rows/s and peak RSS. Baselines: the process with the frame alone (its RSS, and the frame's own
  size by `memory_usage(deep=True)`), and `orbatch submit rows.jsonl --template …` of the same records.
- out: `orbatch.batch(id).results(frame)` of N answered rows (the frame with `answer` and `error` added):
  rows/s and peak RSS. Baseline: `orbatch results BATCH --format records` of the same batch to a file.
Each step runs in a fresh process, so its peak RSS (VmHWM) is its own; answers are stored in SQL, as a
finished run would store them, since calling a million requests measures the worker, not the front.

    uv run python bench/frames.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REDIS_URL, ROOT, fake_results, machine, scratch_database

TEMPLATE = "Label this review: {text}"
MODEL = "sim/echo"

_CHILD = r"""
import os, sys, time
import numpy as np
import pandas as pd

step, rows = sys.argv[1], int(sys.argv[2])

def status_mb(field):
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would report the parent's peak.
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) / 1024

def frame():
    ids = np.arange(rows)
    score = (ids % 10).astype(float)
    score[ids % 7 == 0] = np.nan
    return pd.DataFrame({
        "id": ids,
        "text": [f"Review number {i}: the product arrived on time and works well." for i in range(rows)],
        "score": score,
        "shop": np.where(ids % 2 == 0, "north", "south"),
    })

import gc
import orbatch
data = frame()
gc.collect()
size = data.memory_usage(deep=True).sum() / 1e6
built = status_mb("VmRSS")
# Building the frame peaks above what it holds after; the step's own peak is measured from here (Linux resets
# the high-water mark to the current RSS on "5" to clear_refs).
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
started = time.perf_counter()
if step == "frame":
    count, out = rows, ""
elif step == "submit":
    handle = orbatch.submit(data, template=sys.argv[3], models=sys.argv[4], check_models=False, progress=False)
    count, out = rows, handle.id
elif step == "results":
    back = orbatch.batch(sys.argv[3]).results(data)
    assert len(back) == rows and back["answer"].notna().all()
    count, out = len(back), ""
elapsed = time.perf_counter() - started
orbatch.close()
print(count, elapsed, built, status_mb("VmHWM"), size, out or "-")
"""


def step(
    name: str, env: dict[str, str], rows: int, *extra: str
) -> tuple[int, float, float, float, float, str]:
    """(rows, seconds, RSS holding the frame, peak RSS of the step, the frame's own MB, batch id) of one fresh
    process."""
    done = subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-c", _CHILD, name, str(rows), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    count, seconds, built, peak, size, out = done.stdout.split()
    return int(count), float(seconds), float(built), float(peak), float(size), out


def cli(env: dict[str, str], *args: str) -> float:
    """Seconds one `orbatch` command takes, as a user types it."""
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - started


def write_records(path: Path, rows: int) -> None:
    """The frame's rows as JSONL records, as a user would have them for the CLI."""
    import orjson

    with path.open("wb") as f:
        for i in range(rows):
            record = {
                "id": i,
                "text": f"Review number {i}: the product arrived on time and works well.",
                "score": None if i % 7 == 0 else float(i % 10),
                "shop": "north" if i % 2 == 0 else "south",
            }
            f.write(orjson.dumps(record) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    records = out / "frame-rows.jsonl"
    write_records(records, args.rows)
    print(f"machine: {machine()}")
    with scratch_database() as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORBATCH_", "OPENROUTER_"))}
        env.update(
            DATABASE_URL=url,
            REDIS_URL=REDIS_URL,
            ORBATCH_DATA_DIR=str(out / "frames-data"),
            # Nothing answers here: the intake asks whether the upstream is a simulator and goes on.
            OPENROUTER_BASE_URL="http://127.0.0.1:9/api/v1",
            ORBATCH_LOG_LEVEL="ERROR",
        )
        _, _, alone, _, size, _ = step("frame", env, args.rows)
        count, seconds, built, peak, _, batch_id = step("submit", env, args.rows, TEMPLATE, MODEL)
        cli_seconds = cli(
            env, "submit", str(records), "-t", TEMPLATE, "-m", MODEL, "--no-check-models", "--new"
        )
        print(
            f"frame: {args.rows} rows, {size:.0f} MB by memory_usage(deep=True); process holding it: {alone:.0f} MB RSS"
        )
        print()
        print(f"{'in':58} {'rows/s':>10} {'seconds':>8} {'peak RSS MB':>12}")
        print(
            f"{'baseline: orbatch submit of the same rows as JSONL (CLI)':58} {args.rows / cli_seconds:10,.0f} {cli_seconds:8.1f} {'':>12}"
        )
        print(f"{'orbatch.submit(frame)':58} {count / seconds:10,.0f} {seconds:8.1f} {peak:12.0f}")
        print(
            f"  peak beyond the process holding the frame: {peak - built:.0f} MB (the frame itself: {size:.0f} MB)"
        )
        fake_results(url, batch_id)
        export = out / "frame-results.jsonl"
        export_seconds = cli(env, "results", batch_id, "--format", "records", "-o", str(export))
        count, seconds, built, peak, _, _ = step("results", env, args.rows, batch_id)
        print()
        print(f"{'out':58} {'rows/s':>10} {'seconds':>8} {'peak RSS MB':>12}")
        print(
            f"{'baseline: orbatch results --format records to a file (CLI)':58} {args.rows / export_seconds:10,.0f} {export_seconds:8.1f} {'':>12}"
        )
        print(f"{'orbatch.batch(id).results(frame)':58} {count / seconds:10,.0f} {seconds:8.1f} {peak:12.0f}")
        print(
            f"  peak beyond the process holding the frame: {peak - built:.0f} MB (the frame itself: {size:.0f} MB)"
        )


if __name__ == "__main__":
    main()
