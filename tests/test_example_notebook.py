"""The example notebook, run by a real Jupyter kernel: it labels, is interrupted as ■ does, carries on, scores."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import until

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "python" / "label_emails.ipynb"

pytestmark = pytest.mark.slow


async def _count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(str(output.get("data", {}).get("text/plain", "")))
        parts.append(f"{output.get('ename', '')}: {output.get('evalue', '')}")
    return "\n".join(parts)


async def test_the_notebook_labels_a_dataframe_is_interrupted_carries_on_and_scores(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel gets the environment a user would have exported; its simulator answers slowly enough to be
    # interrupted mid-way.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ORBATCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ORBATCH_SIMULATOR_ARGS", "--latency-ms 200 --no-free-tier --speed 60")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    completed = "SELECT count(*) FROM request WHERE status = 'completed'"

    async def some_answered() -> bool:
        return await _count(engine, completed) >= 20

    async with client.async_setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            if "label" not in cell.metadata.get("tags", []):
                await client.async_execute_cell(cell, index)
                continue
            running = asyncio.create_task(client.async_execute_cell(cell, index))
            await until(some_answered, "the notebook's first answers stored", seconds=180)
            # What pressing ■ does: the kernel gets SIGINT.
            await client.km.interrupt_kernel()
            with pytest.raises(CellExecutionError, match="KeyboardInterrupt"):
                await running
            interrupted = _text(cell)
            assert "is kept" in interrupted
            # Progress was shown as the notebook shows it: a display updated in place.
            assert "ETA" in interrupted
            assert await _count(engine, completed) < 300
    shown = _text(notebook.cells[-2])
    assert "300 labelled, accuracy" in shown
    # Every e-mail answered once: the calls in flight at the interrupt were stored, and none was made again.
    assert await _count(engine, "SELECT count(*) FROM attempt WHERE outcome = 'success'") == 300
    assert await _count(engine, "SELECT count(DISTINCT batch_id) FROM request") == 1
