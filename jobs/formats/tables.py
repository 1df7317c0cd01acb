"""Record tables on disk: `.csv` and `.parquet` files read as JSON records and written from them, types kept.

A csv cell has no type of its own, so a column's type is read from every cell of it (a first pass over the file),
and written so that it reads back the same: ints, floats, bools, text, missing cells and JSON objects or arrays
survive a round trip. The ambiguity left: a text column whose every value reads as another type comes back as that
type (every value a canonical integer such as "12": ints; "1.5": floats; "true"/"false": bools; `{...}`/`[...]`
JSON: the decoded value), and an empty text comes back as None, as a csv cannot tell "" from missing.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import decimal
import gzip
import io
import math
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from jobs.core.errors import BadInput

__all__ = ["TableError", "TableFormat", "read_records", "table_format", "write_records"]

TableFormat = Literal["jsonl", "csv", "parquet"]

# Suffixes, longest first so that `.csv.gz` is seen before a bare `.gz` would be.
_SUFFIXES: tuple[tuple[str, TableFormat], ...] = (
    (".jsonl.gz", "jsonl"),
    (".ndjson.gz", "jsonl"),
    (".json.gz", "jsonl"),
    (".csv.gz", "csv"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".json", "jsonl"),
    (".csv", "csv"),
    (".parquet", "parquet"),
)

# A record becomes one request line, and submit refuses lines over 16 MiB: a csv line or cell is allowed as much,
# where the csv module's own default (128 KiB) would refuse a long document to summarise.
MAX_CELL_BYTES = 16 * 1024 * 1024

# gzip's level 9 costs several times the time of 6 for a few percent of size; 6 is gzip's own command's default.
GZIP_LEVEL = 6

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"

# A csv cell's types, as bits: a column keeps the types every one of its non-empty cells has.
_INT, _FLOAT, _BOOL, _JSON = 1, 2, 4, 8
_ANY = _INT | _FLOAT | _BOOL | _JSON
# Canonical integers only: "007" or "+1" are text someone wrote that way (zip codes, phone numbers).
_INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)")
# JSON's number syntax with a fraction or an exponent: what `repr(float)` writes, and nothing such as "1_000",
# " 1.5", ".5" or "nan" that Python's float() would also take but nobody means as a number.
_FLOAT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+)")
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})
# Parquet and most JSON readers hold 64-bit integers; a longer one stays the text it was (an id, most likely).
_INT64 = range(-(2**63), 2**63)


class TableError(BadInput):
    """A table file that cannot be read or written as records; the message names the file and the row."""


def table_format(path: Path) -> TableFormat | None:
    """The format a file's suffix names (any case): csv, parquet or jsonl; None for any other suffix."""
    name = path.name.lower()
    for suffix, kind in _SUFFIXES:
        if name.endswith(suffix):
            return kind
    return None


def read_records(path: Path, chunk_rows: int = 5000) -> Iterator[list[dict[str, Any]]]:
    """The records of a .csv or .parquet file, chunk_rows at a time, in file order.

    A generator: the file is opened, and any TableError raised, at the first chunk asked for.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    kind = table_format(path)
    if kind == "csv":
        return _read_csv(path, chunk_rows)
    if kind == "parquet":
        return _read_parquet(path, chunk_rows)
    raise TableError(f"{path}: records are read from a .csv, .csv.gz or .parquet file")


async def write_records(path: Path, chunks: Callable[[], AsyncIterator[list[dict[str, Any]]]]) -> int:
    """Write records to `path` in the format its suffix names (jsonl, jsonl.gz, csv, csv.gz, parquet); returns rows written.

    `chunks()` may be called more than once (a format that must know every column, or every type, before writing
    its first row reads twice), and yields the same records each time.
    """
    kind = table_format(path)
    if kind is None:
        raise TableError(
            f"{path}: records are written to a .jsonl, .jsonl.gz, .csv, .csv.gz or .parquet file"
        )
    arrow = _arrow(path, "writing") if kind == "parquet" else None
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        return await _write_jsonl(path, chunks)
    if kind == "csv":
        return await _write_csv(path, chunks)
    return await _write_parquet(path, chunks, arrow)


# --- csv -------------------------------------------------------------------------------------------------------


class _BadLine(Exception):
    """A line of a csv file that is not UTF-8 text, or too long to hold."""


@contextlib.contextmanager
def _open_bytes(path: Path) -> Iterator[io.BufferedIOBase]:
    """The file's bytes, decompressed when it starts as gzip does (whatever its name says)."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise TableError(f"{path}: no such file") from None
    except OSError as exc:
        raise TableError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    with raw:
        if raw.read(2) == _GZIP_MAGIC:
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped
        else:
            raw.seek(0)
            yield raw


def _text_lines(raw: io.BufferedIOBase) -> Iterator[str]:
    """The file's lines as text for the csv module, line ends kept (a quoted cell may hold them)."""
    first = True
    while line := raw.readline(MAX_CELL_BYTES + 1):
        if len(line) > MAX_CELL_BYTES:
            raise _BadLine(f"has a line over {MAX_CELL_BYTES // (1024 * 1024)} MiB")
        if first:
            line = line.removeprefix(_BOM)
            first = False
        # A line split at `\n` never cuts a UTF-8 character in two, so each line decodes on its own.
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadLine(f"is not UTF-8 text (byte {exc.start + 1} of its line)") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """The header as row 0, then each data row with its number; blank lines are counted and skipped."""
    # The csv module's limit is one setting for the whole process: it is only ever raised here, never lowered.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL_BYTES))
    with _open_bytes(path) as raw:
        rows = csv.reader(_text_lines(raw), strict=True)
        # Row numbers count the records after the header, 1-based, blank lines included: row N is the
        # spreadsheet's row N + 1 however many lines its quoted cells span. The header is the first row that is
        # not blank, and is row 0.
        header_seen = False
        number = 0
        while True:
            if header_seen:
                number += 1
            try:
                cells = next(rows)
            except StopIteration:
                return
            except _BadLine as exc:
                raise TableError(f"{path}: {_row_name(number)} {exc}") from None
            except csv.Error as exc:
                raise TableError(f"{path}: {_row_name(number)} cannot be read as csv: {exc}") from None
            except (OSError, EOFError, zlib.error) as exc:
                raise TableError(f"{path}: {_row_name(number)} cannot be read: {exc}") from None
            if not header_seen:
                header_seen = bool(cells)
                if header_seen:
                    yield 0, cells
            elif cells:
                yield number, cells


def _row_name(number: int) -> str:
    return f"row {number}" if number > 0 else "the header row"


def _header(path: Path, names: list[str]) -> list[str]:
    """The header's names, checked: each one present and given once."""
    seen: set[str] = set()
    for column, name in enumerate(names, 1):
        if not name:
            raise TableError(f"{path}: column {column} of the header has no name")
        if name in seen:
            raise TableError(f'{path}: the header names "{name}" twice')
        seen.add(name)
    return names


def _cell_kinds(text: str, possible: int) -> int:
    """Which of the still `possible` types this non-empty cell reads as."""
    kinds = 0
    # Twenty characters hold any 64-bit integer; the length is checked first as int() of a huge text is slow.
    if possible & (_INT | _FLOAT) and len(text) <= 20 and _INT_TEXT.fullmatch(text) and int(text) in _INT64:
        kinds |= _INT | _FLOAT
    elif possible & _FLOAT and _FLOAT_TEXT.fullmatch(text) and math.isfinite(float(text)):
        kinds |= _FLOAT
    if possible & _BOOL and (text in _TRUE or text in _FALSE):
        kinds |= _BOOL
    if possible & _JSON and text[0] in "{[":
        with contextlib.suppress(orjson.JSONDecodeError):
            orjson.loads(text)
            kinds |= _JSON
    return kinds & possible


def _to_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def _converter(kinds: int | None) -> Callable[[str], Any]:
    """How a non-empty cell of a column of these kinds (None: no cell) becomes its value, in order of preference."""
    if kinds is None:
        return lambda _text: None
    if kinds & _INT:
        return int
    if kinds & _FLOAT:
        return float
    if kinds & _BOOL:
        return _to_bool
    if kinds & _JSON:
        return orjson.loads
    return str


def _csv_columns(path: Path) -> tuple[list[str], list[Callable[[str], Any]]]:
    """The first pass: the header, and how each column's cells convert, from every cell of the file."""
    header: list[str] = []
    # None until a column has a non-empty cell; then the types all of them share.
    kinds: list[int | None] = []
    for number, cells in _csv_rows(path):
        if number == 0:
            header = _header(path, cells)
            kinds = [None] * len(header)
            continue
        if len(cells) > len(header):
            raise TableError(f"{path}: row {number} has {len(cells)} cells, the header has {len(header)}")
        for column, text in enumerate(cells):
            if text:
                now = kinds[column]
                possible = _ANY if now is None else now
                kinds[column] = _cell_kinds(text, possible) if possible else 0
    return header, [_converter(k) for k in kinds]


def _read_csv(path: Path, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    """Two passes over the file, so memory holds one chunk whatever its size: types first, then the records."""
    header, converters = _csv_columns(path)
    width = len(header)
    chunk: list[dict[str, Any]] = []
    for number, cells in _csv_rows(path):
        if number == 0:
            continue
        if len(cells) > width:
            raise TableError(f"{path}: row {number} has {len(cells)} cells, the header has {width}")
        try:
            values = [
                convert(text) if text else None for convert, text in zip(converters, cells, strict=False)
            ]
        except ValueError:
            # The first pass saw every cell fit its column's type: only a file changed in between gets here.
            raise TableError(f"{path}: row {number} changed while the file was read") from None
        values += [None] * (width - len(values))
        chunk.append(dict(zip(header, values, strict=True)))
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _csv_cell(value: Any) -> str:
    """A value as csv text that reads back as the same value and type (see the module's note for text)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr is the shortest text that reads back as the same float; JSON has no NaN or infinity, and orjson
        # writes them as null, so they are missing here too.
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    raise TypeError(f"a {type(value).__name__} is not a JSON value")


@contextlib.contextmanager
def _open_text_out(path: Path) -> Iterator[IO[str]]:
    """The file to write csv text to, gzip-compressed when its name ends in `.gz`."""
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8", newline="", compresslevel=GZIP_LEVEL) as out:
            yield out
    else:
        with path.open("w", encoding="utf-8", newline="") as out:
            yield out


@contextlib.contextmanager
def _open_bytes_out(path: Path) -> Iterator[io.BufferedIOBase]:
    """The file to write bytes to, gzip-compressed when its name ends in `.gz`."""
    if path.name.lower().endswith(".gz"):
        with gzip.open(path, "wb", compresslevel=GZIP_LEVEL) as out:
            yield out
    else:
        with path.open("wb") as out:
            yield out


async def _write_csv(path: Path, chunks: Callable[[], AsyncIterator[list[dict[str, Any]]]]) -> int:
    """Two passes: every record's keys make the header (in the order first seen), then the rows."""
    columns: dict[str, None] = {}
    async for chunk in chunks():
        for record in chunk:
            columns.update(dict.fromkeys(record))
    header = list(columns)
    rows = 0
    with _open_text_out(path) as out:
        writer = csv.writer(out)
        writer.writerow(header)
        async for chunk in chunks():
            lines: list[list[str]] = []
            for record in chunk:
                rows += 1
                if not columns.keys() >= record.keys():
                    extra = next(key for key in record if key not in columns)
                    # chunks() broke its promise to give the same records twice: the header is written already.
                    raise TableError(
                        f'{path}: record {rows} has "{extra}", a key none had when the header was made'
                    )
                try:
                    lines.append([_csv_cell(record.get(name)) for name in header])
                except (TypeError, orjson.JSONEncodeError) as exc:
                    raise TableError(f"{path}: record {rows} cannot be written: {exc}") from None
            writer.writerows(lines)
    return rows


# --- jsonl -----------------------------------------------------------------------------------------------------


async def _write_jsonl(path: Path, chunks: Callable[[], AsyncIterator[list[dict[str, Any]]]]) -> int:
    """One pass: a line of JSON per record."""
    rows = 0
    with _open_bytes_out(path) as out:
        async for chunk in chunks():
            lines: list[bytes] = []
            for record in chunk:
                rows += 1
                try:
                    lines.append(orjson.dumps(record))
                except orjson.JSONEncodeError as exc:
                    raise TableError(f"{path}: record {rows} cannot be written as JSON: {exc}") from None
            if lines:
                out.write(b"\n".join(lines) + b"\n")
    return rows


# --- parquet ---------------------------------------------------------------------------------------------------


def _arrow(path: Path, doing: str) -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, imported only when a parquet file is read or written: they are an extra."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TableError(f"{doing} {path} needs pyarrow: pip install 'orbatch[arrow]'") from None
    return pa, pq


class _NotText(Exception):
    """Binary parquet data that is not UTF-8 text, which a JSON record cannot hold."""


def _plain(value: Any) -> Any:
    """A value pyarrow gives as one JSON can hold.

    Dates and times become ISO 8601 text, durations seconds, decimals their exact text, NaN and infinities None
    (JSON has neither), binary data its UTF-8 text (else _NotText: a record is no place for images), anything
    else (a UUID, say) its text.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise _NotText from None
    return str(value)


def _column_plain(pa: Any, arrow_type: Any) -> Callable[[Any], Any] | None:
    """How a column's values become JSON's, chosen by its type; None for those that already are."""
    types = pa.types
    if types.is_dictionary(arrow_type):
        return _column_plain(pa, arrow_type.value_type)
    if types.is_null(arrow_type) or types.is_boolean(arrow_type) or types.is_integer(arrow_type):
        return None
    if types.is_string(arrow_type) or types.is_large_string(arrow_type):
        return None
    if types.is_map(arrow_type):
        # pyarrow gives a map as a list of (key, value) pairs; JSON's is an object.
        key = _column_plain(pa, arrow_type.key_type) or _same
        item = _column_plain(pa, arrow_type.item_type) or _same
        return lambda pairs: None if pairs is None else {str(key(k)): item(v) for k, v in pairs}
    if types.is_list(arrow_type) or types.is_large_list(arrow_type) or types.is_fixed_size_list(arrow_type):
        inner = _column_plain(pa, arrow_type.value_type)
        if inner is None:
            return None
        return lambda items: None if items is None else [inner(item) for item in items]
    if types.is_struct(arrow_type):
        fields = {
            arrow_type.field(i).name: _column_plain(pa, arrow_type.field(i).type) or _same
            for i in range(arrow_type.num_fields)
        }
        return lambda row: None if row is None else {name: fields[name](v) for name, v in row.items()}
    return _plain


def _same(value: Any) -> Any:
    return value


def _read_parquet(path: Path, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    """The file's rows through pyarrow, a batch of chunk_rows at a time, made JSON-friendly (see `_plain`)."""
    pa, pq = _arrow(path, "reading")
    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise TableError(f"{path}: no such file") from None
    except (pa.ArrowException, OSError) as exc:
        raise TableError(f"{path}: not a parquet file that can be read: {exc}") from None
    schema = parquet.schema_arrow
    names: list[str] = list(schema.names)
    plains = [_column_plain(pa, field.type) for field in schema]
    # pyarrow's batches may stop short at a row group's end; records wait here until a whole chunk is read.
    waiting: list[dict[str, Any]] = []
    rows_read = 0
    try:
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            columns: list[list[Any]] = []
            for name, plain, column in zip(names, plains, batch.columns, strict=True):
                values: list[Any] = column.to_pylist()
                if plain is not None:
                    try:
                        values = [plain(value) for value in values]
                    except _NotText:
                        raise TableError(
                            f'{path}: column "{name}" holds binary data that is not UTF-8 text '
                            f"(rows {rows_read + 1}-{rows_read + batch.num_rows}); a record holds only JSON"
                        ) from None
                columns.append(values)
            waiting.extend(dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True))
            rows_read += batch.num_rows
            while len(waiting) >= chunk_rows:
                yield waiting[:chunk_rows]
                del waiting[:chunk_rows]
    except (pa.ArrowException, OSError) as exc:
        raise TableError(f"{path}: cannot be read past row {rows_read}: {exc}") from None
    if waiting:
        yield waiting


def _chunk_schema(pa: Any, path: Path, chunk: list[dict[str, Any]]) -> Any:
    """The arrow schema of one chunk: every key any record has (missing: null), each column's type from its values."""
    names: dict[str, None] = {}
    for record in chunk:
        names.update(dict.fromkeys(record))
    fields = []
    for name in names:
        try:
            column = pa.array([record.get(name) for record in chunk])
        except (pa.ArrowException, OverflowError) as exc:
            raise TableError(f'{path}: column "{name}" cannot be one parquet type: {exc}') from None
        fields.append(pa.field(name, column.type))
    return pa.schema(fields)


async def _write_parquet(
    path: Path, chunks: Callable[[], AsyncIterator[list[dict[str, Any]]]], arrow: Any
) -> int:
    """Two passes: one schema for every chunk, then each chunk written to it (a row group), a chunk in memory at a time.

    Objects in a column become one struct of every key any of them has: they read back with the others as None.
    """
    pa, pq = arrow
    schema = pa.schema([])
    async for chunk in chunks():
        if not chunk:
            continue
        try:
            # Permissive: an int column with floats later is double, a column null so far takes its later type.
            schema = pa.unify_schemas([schema, _chunk_schema(pa, path, chunk)], promote_options="permissive")
        except pa.ArrowException as exc:
            raise TableError(
                f"{path}: a parquet column holds one type, and these records do not: {exc}"
            ) from None
    rows = 0
    try:
        writer = pq.ParquetWriter(path, schema)
    except (pa.ArrowException, OSError) as exc:
        raise TableError(f"{path}: cannot be written as parquet: {exc}") from None
    try:
        async for chunk in chunks():
            if not chunk:
                continue
            try:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            except (pa.ArrowException, OverflowError) as exc:
                raise TableError(
                    f"{path}: records {rows + 1}-{rows + len(chunk)} cannot be written: {exc}"
                ) from None
            rows += len(chunk)
    finally:
        writer.close()
    return rows
