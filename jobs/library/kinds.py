"""The kinds of table the Python front takes and gives back: dicts, pandas, Polars, Arrow, datasets.

Each library is imported only when a table of its kind is given, so none is needed by a user without it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.core.errors import BadInput
from jobs.library.schemas import ColumnType

__all__ = ["Table", "table_of"]

# Rows converted to records at a time: the front's memory beyond the user's table is about one chunk.
CHUNK_ROWS = 5000


@dataclass(slots=True)
class Table:
    """A user's table: its kind's name, its rows as records a chunk at a time, itself with columns added."""

    kind: str
    data: Any
    rows: int
    columns: list[str]

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[list[dict[str, Any]]]:
        """The rows as records (dicts), `size` at a time, in order."""
        data = self.data
        if self.kind == "records":
            for start in range(0, self.rows, size):
                yield list(data[start : start + size])
        elif self.kind == "pandas":
            for start in range(0, self.rows, size):
                yield data.iloc[start : start + size].to_dict("records")
        elif self.kind == "polars":
            for start in range(0, self.rows, size):
                yield data.slice(start, size).to_dicts()
        elif self.kind == "arrow":
            for start in range(0, self.rows, size):
                yield data.slice(start, size).to_pylist()
        elif self.kind == "datasets":
            for batch in data.with_format("arrow").iter(batch_size=size):
                yield batch.to_pylist()

    def with_columns(self, values: dict[str, list[Any]], types: dict[str, ColumnType]) -> Any:
        """The table with these columns added (or, for records, these fields), in the table's own kind."""
        if self.kind == "records":
            names = list(values)
            columns = [values[n] for n in names]
            return [
                {**row, **dict(zip(names, cells, strict=True))}
                for row, cells in zip(self.data, zip(*columns, strict=True), strict=True)
            ]
        if self.kind == "pandas":
            return self.data.assign(**{n: _pandas_column(v, types.get(n, "any")) for n, v in values.items()})
        if self.kind == "polars":
            return self.data.with_columns(
                [_polars_column(n, v, types.get(n, "any")) for n, v in values.items()]
            )
        if self.kind == "arrow":
            table = self.data
            for name, column in values.items():
                table = table.append_column(name, _arrow_column(column, types.get(name, "any")))
            return table
        dataset = self.data
        for name, column in values.items():
            dataset = dataset.add_column(name, _arrow_column(column, types.get(name, "any")).to_pylist())
        return dataset


def _pandas_column(values: list[Any], kind: ColumnType) -> Any:
    import pandas as pd

    # Nullable dtypes: a missing answer stays missing, and a column of ints stays ints.
    dtype = {"int": "Int64", "float": "Float64", "bool": "boolean"}.get(kind)
    if dtype is not None:
        return pd.array(values, dtype=dtype)
    return pd.Series(values, dtype=None if kind == "str" else object).array


def _polars_column(name: str, values: list[Any], kind: ColumnType) -> Any:
    import polars as pl

    dtype = {"int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean, "str": pl.String}.get(kind)
    if dtype is not None:
        return pl.Series(name, values, dtype=dtype, strict=False)
    try:
        return pl.Series(name, values, strict=False)
    except (TypeError, ValueError, pl.exceptions.PolarsError):
        return pl.Series(name, values, dtype=pl.Object)


def _arrow_column(values: list[Any], kind: ColumnType) -> Any:
    import pyarrow as pa

    kinds = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}
    if kind in kinds:
        return pa.array(values, type=kinds[kind])
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Answers whose shapes differ row to row: kept as their JSON text rather than refused.
        import orjson

        return pa.array([None if v is None else orjson.dumps(v).decode() for v in values], type=pa.string())


def _module_of(data: Any) -> str:
    return type(data).__module__.partition(".")[0]


def table_of(data: Any) -> Table:
    """The Table `data` is; BadInput saying what is taken for anything else."""
    module, name = _module_of(data), type(data).__name__
    if module == "pandas" and name == "DataFrame":
        return Table("pandas", data, len(data), [str(c) for c in data.columns])
    if module == "polars" and name == "DataFrame":
        return Table("polars", data, data.height, list(data.columns))
    if module == "pyarrow" and name in {"Table", "RecordBatch"}:
        return Table("arrow", data, data.num_rows, list(data.column_names))
    if module == "datasets" and name == "Dataset":
        return Table("datasets", data, len(data), list(data.column_names))
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        rows = list(data) if not isinstance(data, list) else data
        for number, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise BadInput(
                    f"data: row {number} is {type(row).__name__}; a list of records is a list of dicts",
                    param="data",
                )
        columns: dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        return Table("records", rows, len(rows), list(columns))
    raise BadInput(
        f"data: cannot take a {type(data).__module__}.{name}; give a list of dicts, a pandas or Polars "
        "DataFrame, an Arrow table, a Hugging Face Dataset, or a path to a .jsonl, .jsonl.gz, .csv or .parquet "
        "file",
        param="data",
    )
