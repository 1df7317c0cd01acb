"""Benchmark: how failure shapes of real upstreams end, against the code before they were handled, in one run.

Three scenarios, each run by the code of this checkout and by the code of a baseline commit (by default the one
before the failure handling landed), with the same simulator, against scratch databases:

- trickle: one request to an upstream that answers 200 and then writes a space every 0.3 s for ever, with
  `ORBATCH_REQUEST_TIMEOUT=3` and `--max-attempts 2`: calls made, and whether (and when) a burst worker ended;
- cancel: four requests whose calls answer 500 after 1.5 s, the batch cancelled while they are in flight:
  seconds from the last call's end to `cancelled`;
- outage: 20 requests while the upstream refuses connections for 20 s, then answers: requests failed, calls
  made, seconds from the upstream's return to the batch's completion.

    uv run python bench/failures.py [--baseline 85330ff]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import POSTGRES_URL, REDIS_URL, ROOT, Code, Simulator, baseline_tree, env_for, machine
from jobs.simulator.netfaults import FaultProxy

LIMIT_SECONDS = 60.0


async def _scalar(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _database(code: Code, base_url: str) -> tuple[str, dict[str, str]]:
    url = f"{POSTGRES_URL}/orbatch_fail_{os.urandom(4).hex()}"
    env = env_for(url, base_url, ORBATCH_RETRY_BASE_SECONDS="1", ORBATCH_FEED_INTERVAL="0.2")
    done = code.cli(env, "db", "upgrade")
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return url, env


def _drop(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    subprocess.run(  # noqa: S603 - argv built here
        ["dropdb", "--force", "-h", "127.0.0.1", "-U", "postgres", name], check=False, capture_output=True
    )


def _submit(code: Code, env: dict[str, str], folder: Path, lines: list[str], *args: str) -> str:
    path = folder / f"in-{os.urandom(3).hex()}.jsonl"
    path.write_bytes(
        b"".join(
            orjson.dumps({"custom_id": f"r{i}", "messages": [{"role": "user", "content": t}]}) + b"\n"
            for i, t in enumerate(lines)
        )
    )
    done = code.cli(env, "submit", str(path), "--models", "sim/echo", "--json", *args)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return str(orjson.loads(done.stdout)["id"])


def _wait(process: subprocess.Popen[bytes], seconds: float) -> float | None:
    started = time.monotonic()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None
    return time.monotonic() - started


async def trickle(code: Code, sim: Simulator, folder: Path) -> str:
    sim.configure(reset=True, rules=[{"match": "slow", "kind": "trickle", "interval": 0.3}])
    url, env = _database(code, sim.base_url)
    try:
        env = {**env, "ORBATCH_REQUEST_TIMEOUT": "3"}
        _submit(code, env, folder, ["a slow question"], "--max-attempts", "2")
        ended = _wait(code.worker(env, "--burst"), LIMIT_SECONDS)
        calls = sim.stats().get("calls", 0)
        status = await _scalar(url, "SELECT status FROM request")
        end = (
            f"worker ended after {ended:.1f} s"
            if ended is not None
            else f"worker still running at {LIMIT_SECONDS:.0f} s"
        )
        return f"{calls} calls for max-attempts 2; request {status}; {end}"
    finally:
        _drop(url)


async def cancel(code: Code, sim: Simulator, folder: Path) -> str:
    sim.configure(reset=True, rules=[{"match": "fail", "kind": "status", "status": 500, "delay": 1.5}])
    url, env = _database(code, sim.base_url)
    try:
        batch = _submit(code, env, folder, [f"fail {i}" for i in range(4)])
        worker = code.worker(env, "--burst", "--concurrency", "4")
        while sim.stats().get("in_flight", 0) < 4:
            await asyncio.sleep(0.05)
        code.cli(env, "cancel", batch)
        while sim.stats().get("in_flight", 0) > 0:
            await asyncio.sleep(0.05)
        last_call = time.monotonic()
        deadline = last_call + 30
        while await _scalar(url, f"SELECT status FROM batch WHERE id = '{batch}'") != "cancelled":  # noqa: S608 - an id made here
            if time.monotonic() > deadline:
                worker.kill()
                worker.wait()
                return "still cancelling 30 s after its last call ended"
            await asyncio.sleep(0.05)
        took = time.monotonic() - last_call
        _wait(worker, 30)
        return f"cancelled {took:.2f} s after its last call ended; {sim.stats().get('calls', 0)} calls for 4 requests"
    finally:
        _drop(url)


async def outage(code: Code, sim: Simulator, folder: Path) -> str:
    sim.configure(reset=True, rules=[])
    host, port = sim.root.removeprefix("http://").split(":")
    proxy = FaultProxy(host, int(port))
    await proxy.start()
    base_url = f"http://127.0.0.1:{proxy.port}/api/v1"
    url, env = _database(code, base_url)
    try:
        env = {**env, "ORBATCH_BREAKER_PROBE_BASE": "1", "ORBATCH_BREAKER_PROBE_MAX": "5"}
        _submit(code, env, folder, [f"q {i}" for i in range(20)])
        await proxy.down()
        worker = code.worker(env, "--burst", "--concurrency", "4")
        await asyncio.sleep(20)
        await proxy.up()
        back = time.monotonic()
        ended = await asyncio.to_thread(_wait, worker, LIMIT_SECONDS)
        failed = await _scalar(url, "SELECT count(*) FROM request WHERE status = 'failed'")
        calls = await _scalar(url, "SELECT count(*) FROM attempt")
        done = f"done {time.monotonic() - back:.1f} s after it came back" if ended is not None else "not done"
        return f"{failed} of 20 requests failed; {calls} attempt rows (calls made); {done}"
    finally:
        await proxy.stop()
        _drop(url)


SCENARIOS: dict[str, Callable[[Code, Simulator, Path], Any]] = {
    "trickle": trickle,
    "cancel": cancel,
    "outage": outage,
}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="85330ff", help="the commit to compare with")
    args = parser.parse_args()
    print(machine())
    print(f"Redis {REDIS_URL}, Postgres {POSTGRES_URL}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        codes = [
            Code(f"baseline {args.baseline}", baseline_tree(args.baseline)),
            Code("this checkout", ROOT),
        ]
        sim = Simulator()
        try:
            for name, scenario in SCENARIOS.items():
                for code in codes:
                    print(f"{name:8} {code.name:18} {await scenario(code, sim, folder)}", flush=True)
        finally:
            sim.stop()


if __name__ == "__main__":
    asyncio.run(main())
