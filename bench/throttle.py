"""Benchmark: several worker processes sharing OpenRouter's free per-minute limit, against a naive baseline.

Both run against the simulator enforcing L free requests per W seconds (scaled down from 20 a minute so the
run takes a minute, not an hour) with plenty of work queued:
- orbatch: N `orbatch worker` processes, one global throttle in Redis;
- baseline: N processes, each an asyncio + httpx loop with its own local limiter at L per W and a fixed
  10 s pause after a 429 (what per-process batch scripts do).
Printed: achieved rate against the allowed rate, and the number of 429s, for both.

    uv run python bench/throttle.py [--workers 3] [--limit 20] [--window 6] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import httpx
import orjson

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Simulator, env_for, machine, scratch_database

MODEL = "sim/echo:free"


def _simulator(args: argparse.Namespace) -> Simulator:
    """The simulator enforcing the benchmark's free per-minute limit (and no daily one)."""
    window = ["--free-per-minute", str(args.limit), "--free-window-seconds", str(args.window)]
    return Simulator(*window, "--free-per-day", "100000000")


def run_orbatch(args: argparse.Namespace) -> tuple[int, int]:
    """(successful calls in the measured span, 429s) for orbatch's workers."""
    sim = _simulator(args)
    try:
        with scratch_database() as database_url:
            env = env_for(
                database_url,
                sim.base_url,
                ORBATCH_FREE_REQUESTS_PER_MINUTE=str(args.limit),
                ORBATCH_FREE_WINDOW_SECONDS=str(args.window),
                ORBATCH_FREE_REQUESTS_PER_DAY="100000000",
            )
            total = int(args.limit / args.window * args.seconds * 2) + 50
            path = ROOT / "out" / "bench-throttle.jsonl"
            path.parent.mkdir(exist_ok=True)
            with path.open("wb") as f:
                for i in range(total):
                    f.write(
                        orjson.dumps(
                            {"custom_id": f"r{i}", "messages": [{"role": "user", "content": f"q{i}"}]}
                        )
                        + b"\n"
                    )
            subprocess.run(  # noqa: S603 - argv built here, no shell
                [sys.executable, "-m", "jobs", "submit", str(path), "--models", MODEL],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            workers = [
                subprocess.Popen(  # noqa: S603 - argv built here, no shell
                    [sys.executable, "-m", "jobs", "worker", "--concurrency", str(args.concurrency)],
                    env=env,
                    cwd=ROOT,
                )
                for _ in range(args.workers)
            ]
            try:
                # Measure a steady span: from the first success on.
                while sim.stats().get("status:200", 0) == 0:
                    time.sleep(0.05)
                start = sim.stats().get("status:200", 0)
                time.sleep(args.seconds)
                stats = sim.stats()
                ok = stats.get("status:200", 0) - start
            finally:
                for w in workers:
                    w.terminate()
                for w in workers:
                    w.wait(30)
            return ok, stats.get("status:429", 0)
    finally:
        sim.stop()


async def _baseline_child(base_url: str, limit: int, window: float, seconds: float) -> None:
    """One naive process: its own limiter spaces requests at window/limit; a 429 pauses it 10 s."""
    interval = window / limit
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": "Bearer sk-or-v1-bench"}
    ) as client:
        next_at = time.monotonic()
        i = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            i += 1
            response = await client.post(
                "/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
            )
            if response.status_code == 429:
                await asyncio.sleep(10)
                next_at = time.monotonic()


def run_baseline(args: argparse.Namespace) -> tuple[int, int]:
    """(successful calls in the measured span, 429s) for the naive per-process loops."""
    sim = _simulator(args)
    try:
        children = [
            subprocess.Popen(  # noqa: S603 - argv built here, no shell
                [
                    sys.executable,
                    __file__,
                    "--baseline-child",
                    sim.base_url,
                    "--limit",
                    str(args.limit),
                    "--window",
                    str(args.window),
                    "--seconds",
                    str(args.seconds + 1),
                ],
                cwd=ROOT,
            )
            for _ in range(args.workers)
        ]
        while sim.stats().get("status:200", 0) == 0:
            time.sleep(0.05)
        start = sim.stats().get("status:200", 0)
        time.sleep(args.seconds)
        stats = sim.stats()
        for c in children:
            c.wait(60)
        return stats.get("status:200", 0) - start, stats.get("status:429", 0)
    finally:
        sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--window", type=float, default=6.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--baseline-child", metavar="BASE_URL")
    args = parser.parse_args()
    if args.baseline_child:
        asyncio.run(_baseline_child(args.baseline_child, args.limit, args.window, args.seconds))
        return

    from jobs.core.settings import Settings

    margin = Settings().free_rate_margin
    allowed = args.limit / args.window
    paced = allowed / (1 + margin)
    print(f"machine: {machine()}")
    print(
        f"limit: {args.limit} free requests per {args.window:g} s ({allowed:.3f}/s); {args.workers} processes; {args.seconds:g} s measured"
    )
    print(f"orbatch paces at {paced:.3f}/s (spacing margin {margin:.0%})")
    print()
    rows = [
        ("orbatch (global throttle)", *run_orbatch(args)),
        ("baseline (per-process limiter)", *run_baseline(args)),
    ]
    print(f"{'':34} {'ok/s':>7} {'of paced':>9} {'of limit':>9} {'429s':>6}")
    for name, ok, limited in rows:
        rate = ok / args.seconds
        print(f"{name:34} {rate:7.3f} {rate / paced:9.3f} {rate / allowed:9.3f} {limited:6d}")


if __name__ == "__main__":
    main()
