"""The benchmarks stand on the product, never on the test suite: no `bench/*.py` imports `tests`."""

from __future__ import annotations

import ast

from tests.support import ROOT


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.add(node.module)
    return names


def test_no_bench_script_imports_the_tests() -> None:
    scripts = sorted((ROOT / "bench").glob("*.py"))
    assert scripts, "no bench/*.py found"
    offenders = {
        script.name: sorted(n for n in _imported(ast.parse(script.read_text())) if n.split(".")[0] == "tests")
        for script in scripts
    }
    assert not {name: found for name, found in offenders.items() if found}
