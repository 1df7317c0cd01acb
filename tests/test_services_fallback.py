"""The README's test command on a machine without Postgres or Redis: the suite starts the embedded ones itself.

The machine's services are not stopped (other tests use them): the URLs point at a closed port instead, which
is what a machine without them looks like to the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow


def test_the_suite_runs_on_embedded_services_when_the_test_urls_do_not_answer(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:1",
        "TEST_REDIS_URL": "redis://127.0.0.1:1/14",
    }
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_XDIST_WORKER_COUNT", None)
    ran = subprocess.run(  # noqa: S603 - argv built here, no shell
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'run'}",
            "-n",
            "0",
            "tests/jobs/scheduling/test_feeder.py",
            "tests/jobs/cli/test_run.py::test_status_watch_off_a_terminal_prints_parseable_lines_until_done",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert "services: postgres embedded (TEST_POSTGRES_URL does not answer); redis embedded" in ran.stdout
    assert "7 passed" in ran.stdout
