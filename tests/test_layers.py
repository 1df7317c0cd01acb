"""The tree is the map: every module of `jobs/` sits in a layer, and the layers import one way."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return list(contract["layers"])


def test_every_module_of_jobs_sits_in_a_layer_the_contract_names() -> None:
    layers = _layers()
    packages = {f"jobs.{p.name}" for p in (ROOT / "jobs").iterdir() if (p / "__init__.py").exists()}
    loose = sorted(
        p.name for p in (ROOT / "jobs").glob("*.py") if p.name not in {"__init__.py", "__main__.py"}
    )
    assert not loose, f"modules of jobs/ outside every layer: {loose}; put each in the package of its layer"
    assert packages == {layer for layer in layers if layer.startswith("jobs.")}
    assert "worker" in layers


def test_the_layers_import_one_way() -> None:
    checked = subprocess.run(  # noqa: S603 - argv built here
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_layer_says_its_rule_in_its_docstring() -> None:
    for layer in _layers():
        init = ROOT / Path(*layer.split(".")) / "__init__.py"
        rule = init.read_text().split('"""')[1].lower()
        # What it is for, and what it may import (the CLI, on top, may import everything).
        assert len(rule) > 40, f"{layer} does not say what it is for"
        assert "import" in rule or "on top" in rule, f"{layer} does not say what it may import"
