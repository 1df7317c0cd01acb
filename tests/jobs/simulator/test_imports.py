"""The simulator's modules import one another one way: each loads on its own, and none sits in a cycle."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import grimp
import pytest

import jobs.simulator
from tests.support import ROOT

MODULES = sorted(
    f"jobs.simulator.{info.name}"
    for info in pkgutil.iter_modules(jobs.simulator.__path__)
    if info.name != "__main__"  # importing it serves the simulator
)


def test_the_simulator_has_the_modules_this_test_expects() -> None:
    # A module renamed or lost would otherwise leave the checks below with less to check, silently.
    expected = {
        "batches",
        "catalogue",
        "config",
        "embeddings",
        "faults",
        "limits",
        "main",
        "netfaults",
        "replies",
    }
    assert expected | {"server"} <= {name.rsplit(".", 1)[1] for name in MODULES}


def test_no_simulator_module_is_in_an_import_cycle() -> None:
    graph = grimp.build_graph("jobs")
    cycles = [
        (module, other)
        for module in MODULES
        for other in graph.find_modules_directly_imported_by(module)
        if other.startswith("jobs.simulator.")
        and graph.chain_exists(importer=other, imported=module, as_packages=False)
    ]
    assert not cycles, f"imports that come back round: {cycles}"


@pytest.mark.parametrize("module", MODULES)
def test_each_simulator_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    # A cycle hidden behind an import inside a function shows only when a module is the first one loaded.
    done = subprocess.run(  # noqa: S603 - argv built here
        [sys.executable, "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
