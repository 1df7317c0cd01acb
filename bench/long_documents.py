"""Benchmark: long documents summarised in parts (`--long split`) against a small-context chain, in one run beside
the baseline of the naive chain, and a long-context model for reference.

The documents are State of the Union addresses (`examples/data/sotu.jsonl.gz`, the first ones by default: 8 to
18 kB each) with the summarisation example's template and `--max-tokens 100`. The chain is `sim/small`, whose
context (512 tokens) holds none of them. Three batches of the same file, worked by the same workers:

- `--long split`: each address cut into chunks that fit, each summarised, the summaries combined;
- baseline: the same chain without it, submitted with `--no-check-models` so that submit does not refuse the
  records and the context skip has no other model to go to: each record is sent whole and answered 400;
- reference: the whole address to `sim/echo` (131,072 tokens), one call each.

    uv run python bench/long_documents.py [--documents 10] [--max-tokens 100]

The simulator's "summary" is the prompt echoed, cut at max_tokens (400 characters): it shrinks as a model's
summary would, so the calls and tokens are a real split's; the words are not a model's.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Simulator, burst_worker, env_for, machine, scratch_database

SOTU = ROOT / "examples" / "data" / "sotu.jsonl.gz"
TEMPLATE = ROOT / "examples" / "summarisation" / "prompt.txt"
RUN_SECONDS = 900.0
KINDS = {
    "split": ("sim/small", ["--long", "split"]),
    "naive": ("sim/small", ["--no-check-models"]),
    "whole": ("sim/echo", []),
}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-m", "jobs", *args], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )


async def _figures(url: str, batches: dict[str, str]) -> dict[str, tuple[int, int, int, Decimal, int]]:
    """By batch: documents, answered, calls, dollars, prompt tokens sent."""
    from sqlalchemy import text

    from jobs.core.db import create_engine

    engine = create_engine(url, pool_size=1)
    query = text(
        """
        SELECT (SELECT count(*) FROM request WHERE batch_id = :b) AS documents,
               (SELECT count(*) FROM request WHERE batch_id = :b AND status = 'completed') AS answered,
               count(*) FILTER (WHERE a.outcome <> 'in_flight') AS calls, coalesce(sum(a.cost), 0) AS cost,
               coalesce(sum(a.prompt_tokens), 0) AS prompt_tokens
        FROM attempt a WHERE a.batch_id = :b
        """
    )
    out = {}
    try:
        async with engine.connect() as conn:
            for kind, batch_id in batches.items():
                r = (await conn.execute(query, {"b": batch_id})).one()
                out[kind] = (
                    int(r.documents),
                    int(r.answered),
                    int(r.calls),
                    Decimal(r.cost),
                    int(r.prompt_tokens),
                )
    finally:
        await engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--documents", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=100)
    args = parser.parse_args()
    with gzip.open(SOTU) as f:
        records = [orjson.loads(line) for _, line in zip(range(args.documents), f, strict=False)]
    sim = Simulator()
    try:
        sim.configure(free_per_minute=1_000_000, free_per_day=1_000_000)
        with scratch_database() as url, tempfile.TemporaryDirectory() as folder:
            env = env_for(url, sim.base_url)
            path = Path(folder) / "addresses.jsonl"
            path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
            batches: dict[str, str] = {}
            for kind, (model, options) in KINDS.items():
                done = _cli(
                    env, "submit", str(path), "--json", "--models", model, "--template", str(TEMPLATE),
                    "--max-tokens", str(args.max_tokens), "--max-attempts", "3", *options,
                )  # fmt: skip
                if done.returncode != 0:
                    raise SystemExit(f"submit ({kind}) failed: {done.stderr}")
                batches[kind] = str(orjson.loads(done.stdout)["id"])
            elapsed = burst_worker(env, RUN_SECONDS)
            figures = asyncio.run(_figures(url, batches))
    finally:
        sim.stop()
    size = sum(len(r["text"]) for r in records)
    print(machine())
    print(
        f"{len(records)} addresses ({size / 1000:.0f} kB, {min(len(r['text']) for r in records) / 1000:.1f} to "
        f"{max(len(r['text']) for r in records) / 1000:.1f} kB), --max-tokens {args.max_tokens}, three batches "
        f"worked in one run of {elapsed:.1f} s"
    )
    names = {
        "split": "sim/small (512), --long split",
        "naive": "sim/small (512), sent whole (baseline)",
        "whole": "sim/echo (131,072), sent whole (reference)",
    }
    for kind, name in names.items():
        documents, answered, calls, cost, prompt = figures[kind]
        per = f"{calls / documents:.1f} calls a document" if documents else ""
        print(
            f"  {name:43} {answered}/{documents} answered, {calls} calls ({per}), ${cost:.6f}, "
            f"{prompt:,} prompt tokens"
        )


if __name__ == "__main__":
    main()
