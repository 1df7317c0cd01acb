"""Benchmark: requests/s and CPU per request of orbatch's workers, next to a bare asyncio + httpx loop.

- latency-bound: N requests to the simulator answering after a fixed latency L, with a total concurrency C
  spread over P worker processes. orbatch's requests/s against the ideal C / L (target: at least 0.9 of it).
  Baseline: a bare asyncio + httpx loop with the same concurrency against the same simulator.
- overhead: the same with no latency. End to end (from `orbatch submit` to the last result stored) requests/s,
  and the worker's CPU milliseconds per request while it works (with Postgres's and Redis's beside it), next to a
  bare asyncio + httpx loop that writes each answer to a JSONL file (target: within 3x of its CPU per request,
  while storing every attempt and result in Postgres).

    uv run python bench/throughput.py [--requests 2000] [--latency-ms 500] [--concurrency 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Simulator, env_for, machine, scratch_database

MODEL = "sim/echo"


def _write_requests(path: Path, count: int) -> None:
    with path.open("wb") as f:
        for i in range(count):
            line = {"custom_id": f"r{i}", "messages": [{"role": "user", "content": f"Classify item {i}."}]}
            f.write(orjson.dumps(line) + b"\n")


def _service_cpu(name: str) -> float:
    """CPU seconds used so far by every process of a service (postgres backends come and go; close enough)."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and proc.info["name"].startswith(name):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
    return total


async def _bare_loop(base_url: str, count: int, concurrency: int, out: Path | None) -> tuple[float, float]:
    """A bare asyncio + httpx loop: `count` chat calls, `concurrency` at once; returns (seconds, CPU seconds)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    sink = out.open("wb") if out is not None else None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def one() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = {"model": MODEL, "messages": [{"role": "user", "content": f"Classify item {i}."}]}
                response = await client.post(
                    "/chat/completions", content=orjson.dumps(body), headers={"Authorization": "Bearer x"}
                )
                answer = orjson.loads(response.content)
                if sink is not None:
                    sink.write(orjson.dumps({"custom_id": f"r{i}", "response": answer}) + b"\n")

        cpu0 = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    if sink is not None:
        sink.close()
    return elapsed, cpu


def _bare_in_process(base_url: str, count: int, concurrency: int, out: Path | None) -> tuple[float, float]:
    return asyncio.run(_bare_loop(base_url, count, concurrency, out))


async def _count_done(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM request WHERE status IN ('completed', 'failed')")
        )
    finally:
        await conn.close()


async def _span(url: str) -> tuple[float, int, float, float]:
    """Seconds from the first lease to the last result, calls made, mean ms from lease to result, mean HTTP ms."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)) AS span, count(*) AS calls,"
            " avg(extract(epoch FROM finished_at - started_at)) * 1000 AS held, avg(latency_ms) AS http"
            " FROM attempt"
        )
        return float(row["span"]), int(row["calls"]), float(row["held"]), float(row["http"])
    finally:
        await conn.close()


def _orbatch(sim: Simulator, requests: int, concurrency: int, workers: int, tmp: Path) -> dict[str, float]:
    """Run N requests through P orbatch workers; returns the figures."""
    with scratch_database() as url:
        env = env_for(
            url,
            sim.base_url,
            ORBATCH_MAX_IN_FLIGHT=str(concurrency * 2),
            ORBATCH_FEED_WINDOW=str(max(1000, concurrency * 4)),
        )
        per_worker = max(1, concurrency // workers)
        procs = [
            subprocess.Popen(  # noqa: S603 - argv built here, no shell
                [sys.executable, "-m", "jobs", "worker", "--concurrency", str(per_worker)],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        try:
            time.sleep(3)  # imports, engine, Redis: the workers are up and idle before the clock starts
            watched = [psutil.Process(p.pid) for p in procs]
            cpu0 = sum(w.cpu_times().user + w.cpu_times().system for w in watched)
            pg0, redis0 = _service_cpu("postgres"), _service_cpu("redis-server")
            path = tmp / "requests.jsonl"
            _write_requests(path, requests)
            started = time.perf_counter()
            subprocess.run(  # noqa: S603 - argv built here, no shell
                [sys.executable, "-m", "jobs", "submit", str(path), "--models", MODEL, "--no-check-models"],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            while asyncio.run(_count_done(url)) < requests:
                time.sleep(0.05)
            end_to_end = time.perf_counter() - started
            cpu = sum(w.cpu_times().user + w.cpu_times().system for w in watched) - cpu0
            pg, redis_cpu = _service_cpu("postgres") - pg0, _service_cpu("redis-server") - redis0
            span, calls, held, http = asyncio.run(_span(url))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
    return {
        "end_to_end_s": end_to_end,
        "span_s": span,
        "calls": calls,
        "held_ms": held,
        "http_ms": http,
        "worker_cpu_s": cpu,
        "postgres_cpu_s": pg,
        "redis_cpu_s": redis_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=500.0)
    parser.add_argument("--concurrency", type=int, default=64, help="total, across the worker processes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overhead-requests", type=int, default=3000)
    parser.add_argument("--overhead-concurrency", type=int, default=16)
    args = parser.parse_args()
    print(f"machine: {machine()}")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sim = Simulator("--latency-ms", str(args.latency_ms))
        try:
            ideal = args.concurrency / (args.latency_ms / 1000)
            print(
                f"\nlatency-bound: {args.requests} requests, latency {args.latency_ms:.0f} ms, "
                f"concurrency {args.concurrency} over {args.workers} worker processes; ideal {ideal:.1f} req/s"
            )
            seconds, _ = _bare_in_process(sim.base_url, args.requests, args.concurrency, None)
            rate = args.requests / seconds
            print(f"  baseline: bare asyncio + httpx loop  {rate:8.1f} req/s  {rate / ideal:.3f} of ideal")
            figures = _orbatch(sim, args.requests, args.concurrency, args.workers, tmp)
            rate = figures["calls"] / figures["span_s"]
            print(
                f"  orbatch workers                      {rate:8.1f} req/s  {rate / ideal:.3f} of ideal"
                f"   (end to end from submit: {args.requests / figures['end_to_end_s']:.1f} req/s)"
            )
            print(
                f"    per request: {figures['held_ms']:.1f} ms from lease to stored result, of which "
                f"{figures['http_ms']:.1f} ms the HTTP call"
            )
        finally:
            sim.stop()

        sim = Simulator()
        try:
            n, c = args.overhead_requests, args.overhead_concurrency
            print(f"\noverhead: {n} requests, no latency, concurrency {c}, 1 worker process")
            seconds, cpu = _bare_in_process(sim.base_url, n, c, tmp / "bare.jsonl")
            bare_cpu_ms = cpu / n * 1000
            print(
                f"  baseline: bare loop writing JSONL    {n / seconds:8.1f} req/s  "
                f"{bare_cpu_ms:6.3f} CPU ms/request"
            )
            figures = _orbatch(sim, n, c, 1, tmp)
            cpu_ms = figures["worker_cpu_s"] / n * 1000
            print(
                f"  orbatch, submit to all stored        {n / figures['end_to_end_s']:8.1f} req/s  "
                f"{cpu_ms:6.3f} CPU ms/request (worker) = {cpu_ms / bare_cpu_ms:.2f}x the bare loop"
            )
            print(
                f"    beside it: Postgres {figures['postgres_cpu_s'] / n * 1000:.3f} CPU ms/request, "
                f"Redis {figures['redis_cpu_s'] / n * 1000:.3f} CPU ms/request; "
                f"workers' own span {n / figures['span_s']:.1f} req/s"
            )
        finally:
            sim.stop()


if __name__ == "__main__":
    main()
