"""Benchmark: the dashboard's pages of a 1,000,000-request batch while workers run it, beside same-run baselines.

uv run python -m bench.pages [--requests 1000000] [--rounds 200] [--workers 2] [--explain]
"""

# The batch is made through the API (upload, create), so the triggers fill its tallies; a share of it gets a
# finished past over the last hours in SQL (through the same triggers), and workers work the rest against the
# simulator (every 50th line answered 400, 2 % of calls 500) while the pages are fetched in turn over one
# keep-alive connection. Server time comes from a Server-Timing header this script's ASGI wrapper adds. The
# floor is a static file and a 404 on the same server; the counterexample is the batch's counts by GROUP BY
# over its request rows, straight on Postgres, which is what the pages must never do.

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Simulator, env_for, machine, scratch_database, start_workers

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MODEL = "sim/echo"
BUDGET_MS = 200.0
NAIVE_COUNT = "SELECT status, count(*) FROM request WHERE batch_id = $1 GROUP BY status"
TALLY_COUNT = (
    "SELECT sum(pending), sum(running), sum(completed), sum(failed), sum(cancelled)"
    " FROM batch_tally WHERE batch_id = $1"
)
STATUSES = ("pending", "running", "completed", "failed", "cancelled")


class ServerTiming:
    """Adds `Server-Timing: app;dur=MS`: from the request reaching the app to its answer's headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            # The pages render their whole body before the headers go, so this covers reads and rendering.
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - started) * 1000
                headers = [*message.get("headers", []), (b"server-timing", f"app;dur={ms:.3f}".encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


def serve_timed() -> None:
    """`orbatch serve` with its app wrapped in ServerTiming (run in the server's child process)."""
    from jobs.cli import main, server

    # `serve` looks `create_app` up in its own module when it starts, so the wrapper goes there.
    create = vars(server)["create_app"]
    vars(server)["create_app"] = lambda *args, **kwargs: ServerTiming(create(*args, **kwargs))
    main()


class Server:
    """`orbatch serve --no-auth --no-worker` on a free port, its app timed by ServerTiming."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from bench.pages import serve_timed; serve_timed()",
                "serve",
                "--port",
                "0",
                "--no-auth",
                "--no-worker",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line:
            raise SystemExit("orbatch serve did not start")
        self.url = line.rsplit(" ", 1)[1].strip()


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def write_requests(path: Path, count: int, poison_every: int) -> None:
    """Short chat lines; every `poison_every`-th one carries a word the simulator answers with a 400."""
    with path.open("wb") as f:
        for i in range(count):
            word = b"poison" if poison_every and i % poison_every == poison_every - 1 else b"question"
            f.write(b'{"custom_id":"r%d","messages":[{"role":"user","content":"%s %d"}]}\n' % (i, word, i))


def upload_and_create(base_url: str, path: Path) -> str:
    """The batch made through the API, as a client would: its rows and their tallies by the normal path."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="no-auth", max_retries=0, timeout=3600)
    with path.open("rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": [MODEL]},
    )
    if batch.status != "in_progress":
        raise SystemExit(f"the batch is {batch.status}: {batch.errors}")
    return batch.id


def history_sql(batch_id: str, done: int, hours: float, retry_every: int) -> str:
    """A finished past for the batch's first `done` requests over the last `hours` (every `retry_every`-th: two tries)."""
    # Written as the worker writes it (attempts, then results, then the request rows), so the triggers, not this
    # script, put it into the tallies.
    span = hours * 3600
    return f"""
    BEGIN;
    CREATE TEMP TABLE past ON COMMIT DROP AS
        SELECT id, batch_id, (n % {retry_every} = 0) AS retried,
               now() - make_interval(secs => {span} * (1 - (n - 1)::float8 / {done})) AS at
        FROM (SELECT id, batch_id, row_number() OVER (ORDER BY id) AS n
              FROM request WHERE batch_id = '{batch_id}' ORDER BY id LIMIT {done}) p;
    INSERT INTO attempt (request_id, batch_id, number, started_at, finished_at, latency_ms, http_status, outcome,
                         models_sent, error_code, error_message)
    SELECT id, batch_id, 1, at - interval '2 s', at - interval '1.9 s', 100, 500, 'retry', '{{{MODEL}}}',
           'http_500', 'Internal Server Error (simulated)'
    FROM past WHERE retried;
    INSERT INTO attempt (request_id, batch_id, number, started_at, finished_at, latency_ms, http_status, outcome,
                         models_sent, model, generation_id, prompt_tokens, completion_tokens, cost)
    SELECT id, batch_id, 1 + retried::int, at - interval '100 ms', at, 100, 200, 'success', '{{{MODEL}}}',
           '{MODEL}', 'gen-' || id, 12, 3, 0.000021
    FROM past;
    INSERT INTO result (request_id, attempt_id, body, content, finish_reason, model, created_at)
    SELECT a.request_id, a.id,
           jsonb_build_object('id', a.generation_id, 'model', '{MODEL}', 'object', 'chat.completion',
               'choices', jsonb_build_array(jsonb_build_object('index', 0, 'finish_reason', 'stop',
                   'message', jsonb_build_object('role', 'assistant', 'content', 'ok'))),
               'usage', jsonb_build_object('prompt_tokens', 12, 'completion_tokens', 3, 'cost', 0.000021)),
           'ok', 'stop', '{MODEL}', a.finished_at
    FROM attempt a JOIN past p ON p.id = a.request_id WHERE a.outcome = 'success';
    UPDATE request r SET status = 'completed', attempts = 1 + p.retried::int, failures = p.retried::int,
                         finished_at = p.at
    FROM past p WHERE r.id = p.id;
    UPDATE batch SET started_at = now() - make_interval(secs => {span}) WHERE id = '{batch_id}';
    COMMIT;
    """  # noqa: S608 - built from this script's constants and the batch id the server gave


def psql(url: str, sql: str) -> None:
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True, capture_output=True)  # noqa: S603 - argv built here, no shell


async def counts(url: str, batch_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """The batch's counts by status from its tallies and from its request rows."""
    conn = await asyncpg.connect(url)
    try:
        tallied = await conn.fetchrow(TALLY_COUNT, batch_id)
        scanned = {r["status"]: int(r["count"]) for r in await conn.fetch(NAIVE_COUNT, batch_id)}
        return (
            {s: int(tallied[i] or 0) for i, s in enumerate(STATUSES)},
            {s: scanned.get(s, 0) for s in STATUSES},
        )
    finally:
        await conn.close()


async def time_sql(url: str, sql: str, batch_id: str, times: int) -> list[float]:
    """Milliseconds of each of `times` runs of one statement on one connection."""
    conn = await asyncpg.connect(url)
    try:
        await conn.fetch(sql, batch_id)
        out = []
        for _ in range(times):
            started = time.perf_counter()
            await conn.fetch(sql, batch_id)
            out.append((time.perf_counter() - started) * 1000)
        return out
    finally:
        await conn.close()


async def explain_batch_page(url: str, batch_id: str) -> None:
    """EXPLAIN ANALYZE of every statement the batch page runs, with the parameters the page gives them."""
    from datetime import UTC, datetime

    from sqlalchemy import TextClause, text

    from jobs.api.pages import reads
    from jobs.api.pages.routes import PAGE_BATCHES
    from jobs.core.constants import CHART_SPANS
    from jobs.core.db import create_engine

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            line = await reads.read_batch(conn, None, batch_id)
            assert line is not None
            tallies = await reads.read_tallies(conn, line, datetime.now(UTC), CHART_SPANS, {})
            origin = (line.started_at or line.created_at).replace(second=0, microsecond=0)
            statements: dict[str, tuple[TextClause, dict[str, Any]]] = {
                "batch row and summed tally": (reads._ALL_ONE, {"id": batch_id}),
                "a page of the list": (
                    reads._ALL_PAGE,
                    {"before_at": None, "before_id": None, "limit": PAGE_BATCHES + 1},
                ),
                "by model": (reads._MODELS, {"id": batch_id}),
                "by error code": (reads._ERRORS, {"id": batch_id}),
                "by tries": (reads._TRIES, {"id": batch_id}),
                "by span of its life": (
                    reads._MINUTES,
                    {"id": batch_id, "bucket": tallies.bucket, "origin": origin},
                ),
            }
            for name, (statement, params) in statements.items():
                plan = await conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + statement.text), params)
                print(f"\n-- {name}")
                for row in plan:
                    print(f"   {row[0]}")
    finally:
        await engine.dispose()


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def figures(values: list[float]) -> str:
    if not values:
        return f"{'':>8} {'':>8} {'':>8}"
    ordered = sorted(values)
    return (
        f"{statistics.median(ordered):8.1f} {percentile(ordered, 0.95):8.1f} {percentile(ordered, 0.99):8.1f}"
    )


def server_ms(response: httpx.Response) -> float | None:
    timing = response.headers.get("server-timing", "")
    if not timing.startswith("app;dur="):
        return None
    return float(timing.removeprefix("app;dur="))


def fetch_rounds(
    base: str, paths: dict[str, str], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, bytes]]:
    """Each page in turn, `rounds` times: client ms, server ms and the last body per page."""
    # In turn rather than one page after another, so every page meets the same moments of the workers' run.
    client_ms: dict[str, list[float]] = {name: [] for name in paths}
    own_ms: dict[str, list[float]] = {name: [] for name in paths}
    body: dict[str, bytes] = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(5):  # templates compiled, connections in the pool, the batch read once
            for path in paths.values():
                client.get(path)
        for _ in range(rounds):
            for name, path in paths.items():
                started = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                expected = 404 if path == "/v1/nothing" else 200
                if response.status_code != expected:
                    raise SystemExit(f"{path}: HTTP {response.status_code}: {response.text[:500]}")
                client_ms[name].append(elapsed)
                own = server_ms(response)
                if own is not None:
                    own_ms[name].append(own)
                body[name] = response.content
    return client_ms, own_ms, body


PAGES = {
    "baseline: GET /static/dashboard.css (floor)": "/static/dashboard.css",
    "baseline: GET /v1/nothing (404, floor)": "/v1/nothing",
    "GET / (batch list)": "/",
    "GET /batches/{id} (batch page)": "/batches/{id}",
    "GET /fleet": "/fleet",
    "GET /metrics": "/metrics",
    "GET /v1/batches/{id} (JSON, remembered 1 s)": "/v1/batches/{id}",
}
BATCH_PAGE = "GET /batches/{id} (batch page)"


def other_batches_sql(count: int) -> str:
    """`count` small finished batches made before the big one: the list of a long-lived server, which must not
    cost more with them."""
    return f"""
    INSERT INTO batch (id, name, status, models, max_attempts, total, created_at, started_at, finished_at)
    SELECT 'batch_old_' || g, 'nightly ' || g, 'completed', ARRAY['sim/echo'], 3, 10,
           now() - g * interval '1 minute', now() - g * interval '1 minute', now() - g * interval '1 minute'
                   + interval '30 seconds'
    FROM generate_series(1, {int(count)}) g
    """  # noqa: S608 - a count formatted as an integer


def prepare(args: argparse.Namespace, url: str, server_url: str, path: Path) -> str:
    """The batch, made through the API and given its finished past, after the other batches; its id."""
    if args.other_batches:
        psql(url, other_batches_sql(args.other_batches))
    started = time.perf_counter()
    batch_id = upload_and_create(f"{server_url}/v1", path)
    made = time.perf_counter() - started
    done = int(args.requests * args.history)
    started = time.perf_counter()
    if done:
        psql(url, history_sql(batch_id, done, args.history_hours, 20))
    past = time.perf_counter() - started
    # As autovacuum would by the time anyone looks: plans from real statistics, and the GROUP BY baseline gets
    # its index-only scan (its best case, not a cold table).
    psql(url, "VACUUM ANALYZE")
    tallied, scanned = asyncio.run(counts(url, batch_id))
    print(
        f"batch {batch_id}: {args.requests:,} requests uploaded and created through the API in {made:.0f} s; "
        f"{done:,} given a finished past over {args.history_hours:g} h in {past:.0f} s; "
        f"{args.other_batches:,} older batches beside it"
    )
    print(f"  tallies match the request rows: {tallied == scanned} {tallied}")
    return batch_id


def row(name: str, size: str, client: list[float], server: list[float]) -> None:
    print(f"{name:58} {size:>7}  {figures(client)}  {figures(server)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests in the batch")
    parser.add_argument("--rounds", type=int, default=200, help="sequential fetches of each page")
    parser.add_argument("--scans", type=int, default=30, help="runs of the GROUP BY baseline")
    parser.add_argument("--history", type=float, default=0.3, help="share of the batch finished in the past")
    parser.add_argument("--history-hours", type=float, default=6.0, help="how far back that past reaches")
    parser.add_argument("--workers", type=int, default=2, help="worker processes working the batch")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per worker")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the simulator's answer time")
    parser.add_argument(
        "--other-batches", type=int, default=20_000, help="older small batches in the list beside the big one"
    )
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the batch page's statements")
    args = parser.parse_args()
    # SIGTERM ends the run through the `finally` blocks, so the server, workers and simulator go with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "pages.jsonl"
    write_requests(path, args.requests, 50)
    print(f"machine: {machine()}")
    processes: list[subprocess.Popen[bytes]] = []
    simulator = Simulator("--latency-ms", str(args.latency_ms), "--no-free-tier")
    processes.append(simulator.process)
    try:
        simulator.configure(
            rules=[{"match": "poison", "status": 400, "message": "poison line (simulated)"}], chaos_500=0.02
        )
        with scratch_database() as url:
            env = env_for(url, simulator.base_url, ORBATCH_MAX_UPLOAD_BYTES=str(10**9))
            server = Server(env, out / "pages-server.log")
            processes.append(server.process)
            try:
                batch_id = prepare(args, url, server.url, path)
                workers = start_workers(env, args.workers, args.concurrency, out, "pages")
                processes.extend(workers)
                time.sleep(5)  # imports, Redis, the first leases: the batch is moving before the clock starts
                before, _ = asyncio.run(counts(url, batch_id))
                window = time.perf_counter()
                load = [os.getloadavg()[0]]
                paths = {name: page.replace("{id}", batch_id) for name, page in PAGES.items()}
                client_ms, own_ms, body = fetch_rounds(server.url, paths, args.rounds)
                fetching = time.perf_counter() - window
                load.append(os.getloadavg()[0])
                scans = asyncio.run(time_sql(url, NAIVE_COUNT, batch_id, args.scans))
                sums = asyncio.run(time_sql(url, TALLY_COUNT, batch_id, args.rounds))
                after, _ = asyncio.run(counts(url, batch_id))
                window = time.perf_counter() - window
                stop_all(workers)
                tallied, scanned = asyncio.run(counts(url, batch_id))
                for name in ("GET / (batch list)", BATCH_PAGE, "GET /v1/batches/{id} (JSON, remembered 1 s)"):
                    if batch_id.encode() not in body[name]:
                        raise SystemExit(f"{name} does not show the batch: {body[name][:500]!r}")

                finished = sum(after[s] - before[s] for s in ("completed", "failed"))
                print(
                    f"\n{args.workers} workers ({args.concurrency} in flight each, {args.latency_ms:.0f} ms upstream, "
                    f"2 % of calls 500, every 50th line 400) finished {finished:,} requests in {window:.0f} s "
                    f"({finished / window:.0f}/s), {fetching:.0f} s of it fetching pages, the rest timing SQL"
                )
                print(f"  counts before: {before}")
                print(f"  counts after:  {after}")
                print(f"  tallies match the request rows once the workers stopped: {tallied == scanned}")
                print(
                    "  load average (1 min) before and after the fetches: "
                    f"{load[0]:.1f}, {load[1]:.1f} on {os.cpu_count()} cores"
                )
                print(
                    f"\n{args.rounds} sequential fetches of each page in turn over one keep-alive connection on loopback; "
                    "server ms from Server-Timing"
                )
                print(f"{'':58} {'bytes':>7}  {'client ms':^26}  {'server ms':^26}")
                print(f"{'':58} {'':>7}  {'p50':>8} {'p95':>8} {'p99':>8}  {'p50':>8} {'p95':>8} {'p99':>8}")
                for name in paths:
                    row(name, f"{len(body[name]):,}", client_ms[name], own_ms[name])
                print("the same counts straight on Postgres (asyncpg, one connection):")
                row(f"baseline: GROUP BY status over request rows ({args.scans} runs)", "", scans, [])
                row(f"summed batch_tally shards, as the pages do ({args.rounds} runs)", "", sums, [])
                client_p99 = percentile(sorted(client_ms[BATCH_PAGE]), 0.99)
                own_p99 = percentile(sorted(own_ms[BATCH_PAGE]), 0.99) if own_ms[BATCH_PAGE] else float("nan")
                verdict = "yes" if client_p99 < BUDGET_MS else "NO"
                print(
                    f"\nbatch page of a {args.requests:,}-request batch, p99: {client_p99:.1f} ms client, "
                    f"{own_p99:.1f} ms server; under {BUDGET_MS:.0f} ms: {verdict}"
                )
                if args.explain:
                    asyncio.run(explain_batch_page(url, batch_id))
            finally:
                # Before the database is dropped under them.
                stop_all(processes[1:])
    finally:
        stop_all(processes)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
