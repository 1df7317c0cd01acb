"""The README's "Use it from the OpenAI SDK" example, run as it is written on a machine with only Python."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import psutil

from tests.jobs.api.conftest import ApiServer
from tests.support import ROOT, run_cli

SCALED_SIMULATOR = {
    "ORBATCH_SIMULATOR_ARGS": "--free-window-seconds 1 --free-per-day 100000",
    "ORBATCH_FREE_WINDOW_SECONDS": "1",
    "ORBATCH_FREE_REQUESTS_PER_DAY": "100000",
}


def _readme_example() -> tuple[str, str]:
    """The shell and Python blocks of the README's SDK section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it from the OpenAI SDK", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert shell is not None
    assert python is not None
    return shell.group(1), python.group(1)


def test_the_readme_example_runs_as_written_against_orbatch_serve_on_a_fresh_machine(tmp_path: Path) -> None:
    shell, example = _readme_example()
    assert "orbatch keys create me" in shell
    assert "orbatch serve" in shell
    # No DATABASE_URL, REDIS_URL or OpenRouter key: what a new user has.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORBATCH_", "OPENROUTER_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(ORBATCH_DATA_DIR=str(tmp_path / "data"), **SCALED_SIMULATOR)
    made = run_cli(env, "keys", "create", "me", "--json", timeout=180)
    assert made.returncode == 0, made.stderr
    key = orjson.loads(made.stdout)["key"]
    server = ApiServer(env, tmp_path / "serve.log", "--simulator")
    try:
        code = example.replace("http://127.0.0.1:8000/v1", server.base_url)
        ran = subprocess.run(  # noqa: S603 - argv built here, no shell
            [sys.executable, "-c", code],
            env={**env, "ORBATCH_KEY": key},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        assert server.stop() == 0, server.log()[-2000:]
    assert ran.returncode == 0, ran.stderr
    status, *lines = ran.stdout.strip().splitlines()
    assert status.startswith("completed BatchRequestCounts(completed=12, failed=0, total=12) cost: ")
    answers = {orjson.loads(line)["custom_id"]: orjson.loads(line) for line in lines}
    quickstart = (ROOT / "examples" / "quickstart.jsonl").read_bytes().splitlines()
    assert set(answers) == {orjson.loads(line)["custom_id"] for line in quickstart}
    assert all(
        a["response"]["body"]["choices"][0]["message"]["content"].startswith("echo:")
        for a in answers.values()
    )
    # Nothing of the embedded services is left running.
    assert [
        p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ] == []
