"""Benchmark: the HTTP API under the load a shared service sees, each figure beside a baseline from the same run.

- ingest: a 500,000-line file uploaded with the official openai SDK and made a batch (`files.create`, then
  `batches.create`, which answers once every line is validated and stored): lines/s, and the server's peak
  RSS (VmHWM) over all runs. Baseline: `orbatch submit` of the same file, its submit timed in a fresh process
  as bench/ingest.py does. Runs alternate, each after a checkpoint; medians are shown.
- polling: `GET /v1/batches/{id}` of a 1,000,000-request batch while two workers work it, by 50 concurrent
  clients, each polling every --interval seconds: latency p50 / p99 / max. Baselines, same clients, same
  rate: a bare uvicorn app answering a constant batch object (the floor of HTTP in Python on this machine),
  and `status`'s former count (GROUP BY over the batch's request rows) run straight on Postgres.

    uv run python bench/api.py [--lines 500000] [--repeat 3] [--poll-requests 1000000] [--clients 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Simulator, env_for, machine, scratch_database, start_workers
from bench.ingest import checkpoint, step, write_file

_BARE_APP = r"""
import sys
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
import uvicorn
body = open(sys.argv[1], "rb").read()
async def batch(request):
    return Response(body, media_type="application/json")
app = Starlette(routes=[Route("/v1/batches/{batch_id}", batch)])
config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
uvicorn.Server(config).run()
"""

_POLLERS = r"""
import asyncio, json, random, sys, time
mode, target, key, clients, interval, seconds = sys.argv[1:7]
clients, interval, seconds = int(clients), float(interval), float(seconds)

async def http_poller(session, url, headers, stop, out):
    # Clients start at random moments, as independent pollers do, not all in the same millisecond.
    await asyncio.sleep(random.uniform(0, interval))
    while time.monotonic() < stop:
        started = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            await response.read()
            assert response.status == 200, response.status
        out.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))

async def sql_poller(pool, batch_id, stop, out):
    await asyncio.sleep(random.uniform(0, interval))
    while time.monotonic() < stop:
        started = time.perf_counter()
        async with pool.acquire() as conn:
            await conn.fetch("SELECT status, count(*) FROM request WHERE batch_id = $1 GROUP BY status", batch_id)
        out.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))

async def main():
    out = []
    stop = time.monotonic() + seconds
    if mode == "http":
        # aiohttp: a light client, so the load generator is not what is measured.
        import aiohttp
        headers = {"Authorization": f"Bearer {key}"}
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(http_poller(session, target, headers, stop, out) for _ in range(clients)))
    else:
        import asyncpg
        url, batch_id = target.split("#")
        # A pool of 10 connections, as an application would hold (Postgres allows 100 in all here).
        pool = await asyncpg.create_pool(url, min_size=10, max_size=10)
        await asyncio.gather(*(sql_poller(pool, batch_id, stop, out) for _ in range(clients)))
        await pool.close()
    print(json.dumps(out))

asyncio.run(main())
"""


class Server:
    """`orbatch serve --no-worker` on a free port, as a child whose VmHWM can be read."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jobs", "serve", "--port", "0", "--no-worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().decode().rsplit(" ", 1)[1].strip()

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def running(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(60)


def make_key(env: dict[str, str], name: str) -> str:
    made = subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-m", "jobs", "keys", "create", name, "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return str(orjson.loads(made.stdout)["key"])


def upload_and_create(base_url: str, key: str, path: Path) -> tuple[str, float]:
    """(batch id, seconds) from the first byte uploaded to the batch stored and queued."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=3600)
    started = time.perf_counter()
    with path.open("rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["sim/echo"]},
    )
    seconds = time.perf_counter() - started
    if batch.status != "in_progress":
        raise SystemExit(f"the batch is {batch.status}: {batch.errors}")
    return batch.id, seconds


def polls(mode: str, target: str, key: str, clients: int, interval: float, seconds: float) -> list[float]:
    done = subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-c", _POLLERS, mode, target, key, str(clients), str(interval), str(seconds)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return list(orjson.loads(done.stdout))


def percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{len(ordered):8d} {statistics.median(ordered) * 1000:8.1f} {p99 * 1000:8.1f} {ordered[-1] * 1000:8.1f}"


def short_lines(path: Path, count: int) -> None:
    with path.open("wb") as f:
        for i in range(count):
            f.write(b'{"custom_id":"r%d","messages":[{"role":"user","content":"question %d"}]}\n' % (i, i))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--poll-requests", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between one client's polls")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the clients poll")
    parser.add_argument("--workers", type=int, default=2, help="worker processes working the polled batch")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per worker")
    args = parser.parse_args()
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    ingest_file, poll_file = out / "api-ingest.jsonl", out / "api-poll.jsonl"
    write_file(ingest_file, args.lines)
    short_lines(poll_file, args.poll_requests)
    print(f"machine: {machine()}")
    print(f"ingest file: {args.lines} lines, {ingest_file.stat().st_size / 1e6:.0f} MB")
    simulator = Simulator("--latency-ms", "100")
    try:
        with scratch_database() as url:
            env = env_for(
                url, simulator.base_url, ORBATCH_MAX_UPLOAD_BYTES=str(10**9), ORBATCH_API_DB_POOL="10"
            )
            key = make_key(env, "bench")
            server = Server(env)
            try:
                base_url = f"{server.url}/v1"
                warm = out / "api-warm.jsonl"
                write_file(warm, 1000)
                upload_and_create(base_url, key, warm)  # imports, connections and the model list, once
                submits, creates = [], []
                for _ in range(args.repeat):  # --repeat 0: the polling part only
                    checkpoint(url)
                    count, seconds, _ = step("submit", url, ingest_file)
                    submits.append(count / seconds)
                    checkpoint(url)
                    _, seconds = upload_and_create(base_url, key, ingest_file)
                    creates.append(args.lines / seconds)
                peak = server.peak_rss_mb()
                submit = statistics.median(submits) if submits else float("nan")
                create = statistics.median(creates) if creates else float("nan")
                print()
                print(
                    f"{'ingest, ' + str(args.lines) + ' lines (median of ' + str(args.repeat) + ')':60} {'lines/s':>10}"
                )
                print(f"{'baseline: orbatch submit (submit timed in a fresh process)':60} {submit:10,.0f}")
                print(
                    f"{'API: SDK files.create + batches.create':60} {create:10,.0f}   {create / submit:.2f} of submit"
                )
                print(
                    f"  runs: submit {', '.join(f'{r:,.0f}' for r in submits)}; API {', '.join(f'{r:,.0f}' for r in creates)}"
                )
                print(f"  server peak RSS over every upload and create: {peak:.0f} MB")

                # The ingest batches stop, so the workers work the batch being polled.
                subprocess.run(  # noqa: S603 - argv built here, no shell
                    ["psql", "-q", url, "-c", "UPDATE batch SET status = 'cancelled', finished_at = now()"],
                    check=True,
                    capture_output=True,
                )
                started = time.perf_counter()
                batch_id, _ = upload_and_create(base_url, key, poll_file)
                print(
                    f"\npolling: {args.poll_requests} requests uploaded and stored in {time.perf_counter() - started:.0f} s"
                )
                workers = start_workers(env, args.workers, args.concurrency, out, "api")
                with running(*workers):
                    time.sleep(5)
                    retrieve = f"{base_url}/batches/{batch_id}"
                    before = orjson.loads(
                        subprocess.run(  # noqa: S603 - argv built here, no shell
                            ["curl", "-s", "-H", f"Authorization: Bearer {key}", retrieve],
                            capture_output=True,
                            check=True,
                        ).stdout
                    )
                    ours = polls("http", retrieve, key, args.clients, args.interval, args.seconds)
                    after = orjson.loads(
                        subprocess.run(  # noqa: S603 - argv built here, no shell
                            ["curl", "-s", "-H", f"Authorization: Bearer {key}", retrieve],
                            capture_output=True,
                            check=True,
                        ).stdout
                    )
                    sample = out / "api-batch.json"
                    sample.write_bytes(orjson.dumps(after))
                    bare = subprocess.Popen([sys.executable, "-c", _BARE_APP, str(sample), "18731"], cwd=ROOT)  # noqa: S603 - argv built here, no shell
                    with running(bare):
                        time.sleep(2)
                        floor = polls(
                            "http",
                            "http://127.0.0.1:18731/v1/batches/x",
                            key,
                            args.clients,
                            args.interval,
                            args.seconds,
                        )
                    scans = polls(
                        "sql", f"{url}#{batch_id}", key, args.clients, args.interval, min(args.seconds, 20)
                    )
                worked = after["request_counts"]["completed"] - before["request_counts"]["completed"]
                print(
                    f"{args.clients} clients, one poll each every {args.interval} s for {args.seconds:.0f} s; "
                    f"{args.workers} workers ({args.concurrency} in flight each, 100 ms upstream latency) "
                    f"answered {worked} requests meanwhile"
                )
                print(f"{'GET /v1/batches/{id}':60} {'polls':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
                print(f"{'baseline: bare uvicorn app, a constant batch object':60} {percentiles(floor)}")
                print(
                    f"{'baseline: GROUP BY count of the request rows, in Postgres':60} {percentiles(scans)}"
                )
                print(f"{'orbatch serve (tallies, one statement)':60} {percentiles(ours)}")
            finally:
                server.stop()
    finally:
        simulator.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
