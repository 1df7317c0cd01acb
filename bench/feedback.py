"""Benchmark: the share of records that end valid with and without the correction turn, in one run.

The simulator plays a model that errs: a share of its replies to a JSON-schema request fail the schema
(`err_rate`; invalid JSON, or with `--label` a fixed wrong label), drawn per prompt and call so that the run is
the same each time, and it answers a correction turn right (the simulator's model of a model that fixes its
mistake once told; a real model does not always). The same file is submitted twice, feedback on and off (two
batches, since the option is part of the off batch's identity), and both are worked by the same workers.

    uv run python bench/feedback.py [--records 200] [--err-rate 0.3] [--max-attempts 2] [--label unsure]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Simulator, burst_worker, env_for, machine, scratch_database

MODEL = "sim/echo"
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative", "neutral"]}},
    "required": ["label"],
    "additionalProperties": False,
}
# Long enough for a few hundred records on two cores; a run that takes longer has stalled.
RUN_SECONDS = 600.0


def _write_requests(path: Path, count: int) -> None:
    asking = {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": SCHEMA}}
    with path.open("wb") as f:
        for i in range(count):
            line = {
                "custom_id": f"r{i}",
                "messages": [{"role": "user", "content": f"Label the sentiment of review {i}."}],
                "response_format": asking,
            }
            f.write(orjson.dumps(line) + b"\n")


async def _shares(url: str) -> dict[bool, tuple[int, int, int]]:
    """By feedback on/off: records, records that ended valid, and of those the ones that needed a correction."""
    from sqlalchemy import text

    from jobs.core.db import create_engine

    engine = create_engine(url, pool_size=1)
    query = text(
        """
        SELECT coalesce((b.options->>'feedback')::bool, true) AS feedback, count(*) AS records,
               count(*) FILTER (WHERE r.status = 'completed') AS valid,
               count(*) FILTER (WHERE r.status = 'completed' AND EXISTS (
                   SELECT 1 FROM attempt a WHERE a.request_id = r.id AND a.error_code = 'invalid_output'
               )) AS corrected
        FROM batch b JOIN request r ON r.batch_id = b.id GROUP BY 1
        """
    )
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    finally:
        await engine.dispose()
    return {bool(r.feedback): (int(r.records), int(r.valid), int(r.corrected)) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--err-rate", type=float, default=0.3)
    parser.add_argument("--max-attempts", type=int, default=2)
    parser.add_argument("--label", default=None, help="err with this label, not with invalid JSON")
    args = parser.parse_args()
    sim = Simulator()
    try:
        sim.configure(
            free_per_minute=1_000_000,
            free_per_day=1_000_000,
            err_rate={MODEL: args.err_rate},
            err_label=args.label,
        )
        with scratch_database() as url, tempfile.TemporaryDirectory() as folder:
            env = env_for(
                url, sim.base_url, ORBATCH_RETRY_BASE_SECONDS="0.05", ORBATCH_RETRY_MAX_SECONDS="0.2"
            )
            path = Path(folder) / "reviews.jsonl"
            _write_requests(path, args.records)
            for options in ([], ["--no-feedback"]):
                done = subprocess.run(  # noqa: S603 - argv built here, no shell
                    [
                        sys.executable,
                        "-m",
                        "jobs",
                        "submit",
                        str(path),
                        "--models",
                        MODEL,
                        "--max-attempts",
                        str(args.max_attempts),
                        "--no-check-models",
                        *options,
                    ],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    raise SystemExit(f"submit failed: {done.stderr}")
            elapsed = burst_worker(env, RUN_SECONDS)
            shares = asyncio.run(_shares(url))
    finally:
        sim.stop()
    kind = f"the wrong label {args.label!r}" if args.label else "invalid JSON"
    print(machine())
    print(
        f"{args.records} records, a model erring with {kind} on {args.err_rate:.0%} of its replies, "
        f"--max-attempts {args.max_attempts}, both batches in one run of {elapsed:.1f} s"
    )
    for feedback, name in ((True, "with feedback"), (False, "without feedback")):
        records, valid, corrected = shares[feedback]
        print(f"  {name:17} {valid}/{records} valid ({valid / records:.1%}), {corrected} after a correction")


if __name__ == "__main__":
    main()
