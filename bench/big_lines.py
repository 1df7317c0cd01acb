"""Benchmark: submit's peak memory on lines of many megabytes, this checkout next to a baseline commit.

Files of 400 lines of 2 MiB and of 20 lines of 15 MiB, plain and gzip; each submitted in a fresh process whose
peak resident memory is read from /proc/self/status (VmHWM). The target: under 250 MB whatever the lines' sizes.

    uv run python bench/big_lines.py [--baseline 85330ff]
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Code, baseline_tree, machine, scratch_database

# Runs in the process being measured, with the code of the tree it starts in.
_SUBMIT = (
    "import asyncio, sys\n"
    "from pathlib import Path\n"
    "from jobs.core.db import create_engine\n"
    "from jobs.submission.submit import SubmitOptions, submit_file\n"
    "async def go():\n"
    "    engine = create_engine(sys.argv[1], pool_size=1)\n"
    "    await submit_file(engine, Path(sys.argv[2]), SubmitOptions(models=['sim/echo'], new=True))\n"
    "    await engine.dispose()\n"
    "asyncio.run(go())\n"
    "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
)


def _file(folder: Path, count: int, mib: int, compressed: bool) -> Path:
    path = folder / f"{count}x{mib}MiB.jsonl{'.gz' if compressed else ''}"
    opener = gzip.open if compressed else open
    with opener(path, "wb") as f:
        for i in range(count):
            text = (f"line {i} " * ((mib << 20) // 8 + 1))[: mib << 20]
            f.write(
                orjson.dumps({"custom_id": f"big-{i}", "messages": [{"role": "user", "content": text}]})
                + b"\n"
            )
    return path


def _peak_mb(code: Code, database_url: str, path: Path) -> str:
    done = subprocess.run(  # noqa: S603 - argv built here
        [code.python, "-c", _SUBMIT, database_url, str(path)],
        cwd=code.tree,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:120]
    return f"{int(done.stdout.strip().splitlines()[-1]) / 1024:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", default="85330ff", help="the commit to compare with")
    args = parser.parse_args()
    print(machine())
    codes = [Code(f"baseline {args.baseline}", baseline_tree(args.baseline)), Code("this checkout", ROOT)]
    with tempfile.TemporaryDirectory() as scratch, scratch_database() as url:
        folder = Path(scratch)
        for count, mib in ((400, 2), (20, 15)):
            for compressed in (False, True):
                path = _file(folder, count, mib, compressed)
                peaks = ", ".join(f"{code.name}: {_peak_mb(code, url, path)}" for code in codes)
                print(
                    f"{path.name:22} {path.stat().st_size / 2**20:7.1f} MiB on disk   peak RSS  {peaks}",
                    flush=True,
                )
                path.unlink()


if __name__ == "__main__":
    main()
