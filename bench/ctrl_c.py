"""Benchmark: Ctrl-C from a terminal during `orbatch run` with paid calls in flight, this checkout beside a baseline.

A fresh data dir (embedded Postgres and Redis, as a new user has), `run --simulator` of 200 requests at
concurrency 16 whose calls take 3 s, started as a terminal starts a job (its own process group). Once a first
wave of answers is in, SIGINT goes to the whole group, as a terminal's Ctrl-C does. Measured for each version of
the code: seconds from Ctrl-C to exit (capped; then SIGKILL), the exit status, results written, and, after the
same command is run again to the end, how many calls were made beyond one per request (calls repeated).

    uv run python bench/ctrl_c.py [--baseline b57f203] [--cap 180]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Code, baseline_tree, machine

TOTAL = 200
CONCURRENCY = 16
LATENCY_MS = 3000


def _env(data_dir: Path, simulator_args: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORBATCH_", "OPENROUTER_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(ORBATCH_DATA_DIR=str(data_dir), ORBATCH_SIMULATOR_ARGS=simulator_args)
    return env


def _done(line: str) -> int:
    for word in line.split():
        if word.startswith("done="):
            return int(word.removeprefix("done="))
    return -1


def one(code: Code, cap: float) -> dict[str, object]:
    """Ctrl-C a run of `code` with calls in flight; what came of it, and of running it again."""
    folder = Path(tempfile.mkdtemp(prefix="orbatch-bench-ctrlc-"))
    folder.chmod(0o755)  # the embedded Postgres runs as its own user when this runs as root
    data = folder / "data"
    requests = folder / "in.jsonl"
    with requests.open("wb") as f:
        for i in range(TOTAL):
            f.write(
                orjson.dumps({"custom_id": f"r{i}", "messages": [{"role": "user", "content": f"row {i}"}]})
            )
            f.write(b"\n")
    out = folder / "out.jsonl"
    args = ["run", str(requests), "-o", str(out), "--models", "sim/echo", "--simulator"]
    env = _env(data, f"--latency-ms {LATENCY_MS} --no-free-tier --speed 60")
    process = subprocess.Popen(  # noqa: S603 - argv built here
        [code.python, "-m", "jobs", *args, "--concurrency", str(CONCURRENCY)],
        env=env,
        cwd=code.tree,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if _done(line) >= CONCURRENCY:
            break
    os.killpg(process.pid, signal.SIGINT)
    started = time.monotonic()
    try:
        status: int | str = process.wait(cap)
        seconds: float | str = round(time.monotonic() - started, 1)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        status, seconds = "killed", f"> {cap:.0f}"
    process.stderr.close()
    written = len(out.read_bytes().splitlines()) if out.exists() else 0
    again = code.cli(_env(data, "--no-free-tier --speed 60"), *args)
    batches = orjson.loads(code.cli(_env(data, ""), "status", "--json").stdout or b"[]")
    attempts = int(batches[0]["attempts"]) if batches else 0
    completed = int(batches[0]["request_counts"]["completed"]) if batches else 0
    return {
        "code": code.name,
        "exit after Ctrl-C, s": seconds,
        "exit status": status,
        "results written": written,
        "re-run status": again.returncode,
        "completed": completed,
        "calls repeated": attempts - completed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="b57f203", help="the commit to compare with")
    parser.add_argument("--cap", type=float, default=180.0, help="seconds to wait for an exit before SIGKILL")
    options = parser.parse_args()
    print(machine())
    print(
        f"{TOTAL} requests, concurrency {CONCURRENCY}, calls of {LATENCY_MS / 1000:g} s, Ctrl-C to the group"
    )
    results = [one(Code("this checkout", ROOT), options.cap)]
    results.append(one(Code(f"baseline {options.baseline}", baseline_tree(options.baseline)), options.cap))
    keys = list(results[0])
    print(" | ".join(keys))
    for row in results:
        print(" | ".join(str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
