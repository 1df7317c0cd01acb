"""`orbatch run` and `results` read and write .csv and .parquet record tables; types and columns survive."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.formats.tables import read_records
from tests.support import run_cli

MODEL = "meta-llama/llama-3.3-70b-instruct:free"
ROWS = [
    {"id": 3, "text": "first", "zip": "007", "score": 1.5, "seen": True, "note": None},
    {"id": 1, "text": "second", "zip": "010", "score": None, "seen": False, "note": "kept"},
]


def _run(env: dict[str, str], source: Path, output: Path) -> None:
    done = run_cli(
        env, "run", str(source), "-t", "Say {text}", "-m", MODEL, "--format", "records", "-o", str(output)
    )
    assert done.returncode == 0, done.stderr


def test_a_csv_goes_in_and_comes_back_with_its_types_and_column_order(
    env: dict[str, str], tmp_path: Path
) -> None:
    source = tmp_path / "reviews.csv"
    source.write_text("id,text,zip,score,seen,note\n3,first,007,1.5,true,\n1,second,010,,false,kept\n")
    _run(env, source, tmp_path / "out.csv")
    (back,) = read_records(tmp_path / "out.csv")
    assert [list(r)[:6] for r in back] == [list(ROWS[0])] * 2
    assert [{k: r[k] for k in ROWS[0]} for r in back] == ROWS
    assert [r["answer"] for r in back] == ["echo: Say first", "echo: Say second"]


def test_a_parquet_goes_in_and_a_parquet_comes_back_typed(env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "reviews.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), source)
    _run(env, source, tmp_path / "out.parquet")
    back = pq.read_table(tmp_path / "out.parquet")
    assert back.column_names == [*ROWS[0], "answer"]
    assert back.schema.field("id").type == pa.int64()
    assert back.schema.field("seen").type == pa.bool_()
    assert back.to_pylist()[1]["score"] is None


def test_a_table_without_a_template_and_batch_lines_to_a_csv_are_refused_saying_why(
    env: dict[str, str], tmp_path: Path
) -> None:
    source = tmp_path / "reviews.csv"
    source.write_text("id,text\n1,first\n")
    refused = run_cli(env, "run", str(source), "-m", MODEL, "-o", str(tmp_path / "out.jsonl"))
    assert refused.returncode == 2
    assert "is a table of records (csv): give --template" in refused.stderr
    batch_lines = run_cli(
        env, "run", str(source), "-t", "Say {text}", "-m", MODEL, "-o", str(tmp_path / "o.csv")
    )
    assert batch_lines.returncode == 2
    assert "add --format records" in batch_lines.stderr
