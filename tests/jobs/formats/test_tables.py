"""Record tables: csv and parquet files read as JSON records and written from them, their types kept."""

from __future__ import annotations

import datetime
import decimal
import gzip
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from jobs.core.errors import BadInput
from jobs.formats.tables import TableError, read_records, table_format, write_records

Records = list[dict[str, Any]]

MIXED: Records = [
    {"id": 1, "score": 0.5, "ok": True, "name": "ada", "tags": ["a", "b"], "meta": {"k": 1}, "note": None},
    {"id": 2, "score": -2e-07, "ok": False, "name": 'b, "c"\nd', "tags": [], "meta": {"k": 2}, "note": "x"},
    {"id": -3, "score": 1e16, "ok": None, "name": "", "tags": None, "meta": None, "note": None},
]


class Source:
    """Records handed over in chunks, as an export gives them; counts how often they were asked for."""

    def __init__(self, records: Records, size: int = 2) -> None:
        self.chunks = [records[i : i + size] for i in range(0, len(records), size)]
        self.passes = 0

    async def _chunks(self) -> AsyncIterator[Records]:
        for chunk in self.chunks:
            yield chunk

    def __call__(self) -> AsyncIterator[Records]:
        self.passes += 1
        return self._chunks()


def chunked(*chunks: Records) -> Callable[[], AsyncIterator[Records]]:
    """A source of exactly these chunks."""
    source = Source([])
    source.chunks = list(chunks)
    return source


def read_all(path: Path, chunk_rows: int = 5000) -> Records:
    return [record for chunk in read_records(path, chunk_rows) for record in chunk]


def write_csv_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


# --- which format ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("in.csv", "csv"),
        ("in.csv.gz", "csv"),
        ("IN.CSV", "csv"),
        ("in.parquet", "parquet"),
        ("in.jsonl", "jsonl"),
        ("in.jsonl.gz", "jsonl"),
        ("in.json", "jsonl"),
        ("in.ndjson", "jsonl"),
        ("in.tsv", None),
        ("in.xlsx", None),
        ("in.gz", None),
        ("csv", None),
    ],
)
def test_the_format_is_named_by_the_suffix(name: str, kind: str | None) -> None:
    assert table_format(Path(name)) == kind


# --- csv, read ------------------------------------------------------------------------------------------------


def test_a_csv_keeps_ints_floats_bools_and_missing_cells(tmp_path: Path) -> None:
    path = write_csv_text(
        tmp_path / "t.csv",
        "n,x,flag,word,blank\n1,1.5,true,a,\n-2,3,FALSE,b,\n,,,,\n0,-2e3,True,,\n",
    )
    assert read_all(path) == [
        {"n": 1, "x": 1.5, "flag": True, "word": "a", "blank": None},
        # An int in a column of floats is a float.
        {"n": -2, "x": 3.0, "flag": False, "word": "b", "blank": None},
        {"n": None, "x": None, "flag": None, "word": None, "blank": None},
        {"n": 0, "x": -2000.0, "flag": True, "word": None, "blank": None},
    ]
    assert type(read_all(path)[1]["x"]) is float


def test_a_zip_code_like_007_keeps_its_column_text(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "t.csv", "zip,phone,n\n007,+4412,1\n12,0044,2\n")
    assert read_all(path) == [
        {"zip": "007", "phone": "+4412", "n": 1},
        {"zip": "12", "phone": "0044", "n": 2},
    ]


def test_one_cell_of_text_makes_its_whole_column_text(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "t.csv", "a,b,c\n1,true,1.5\nx,yes,nan\n3,false,inf\n")
    assert read_all(path) == [
        {"a": "1", "b": "true", "c": "1.5"},
        {"a": "x", "b": "yes", "c": "nan"},
        {"a": "3", "b": "false", "c": "inf"},
    ]


def test_numbers_are_json_numbers_not_whatever_python_would_parse(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "t.csv", "a,b,c,d\n1_000,.5, 1,1e999\n")
    assert read_all(path) == [{"a": "1_000", "b": ".5", "c": " 1", "d": "1e999"}]


def test_an_integer_beyond_64_bits_stays_text(tmp_path: Path) -> None:
    big = str(2**63)
    path = write_csv_text(tmp_path / "t.csv", f"id\n{big}\n{2**63 - 1}\n")
    assert read_all(path) == [{"id": big}, {"id": str(2**63 - 1)}]


def test_json_cells_are_decoded_unless_one_of_the_column_is_not_json(tmp_path: Path) -> None:
    path = write_csv_text(
        tmp_path / "t.csv",
        'obj,bad\n"{""a"": [1, 2]}","[1]"\n"[true, null]","{not json}"\n',
    )
    assert read_all(path) == [
        {"obj": {"a": [1, 2]}, "bad": "[1]"},
        {"obj": [True, None], "bad": "{not json}"},
    ]


def test_a_short_row_has_none_for_its_missing_cells(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "t.csv", "a,b,c\n1\n2,3,4\n")
    assert read_all(path) == [{"a": 1, "b": None, "c": None}, {"a": 2, "b": 3, "c": 4}]


def test_a_bom_crlf_and_quoted_newlines_are_read_as_excel_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbfname,text\r\nx,"two\r\nlines"\r\n\r\ny,"say ""hi"""\r\n')
    assert read_all(path) == [{"name": "x", "text": "two\r\nlines"}, {"name": "y", "text": 'say "hi"'}]


def test_a_gzip_csv_is_read_whatever_its_name(tmp_path: Path) -> None:
    data = gzip.compress(b"a,b\n1,x\n2,y\n")
    (tmp_path / "t.csv.gz").write_bytes(data)
    (tmp_path / "t.csv").write_bytes(data)
    expected = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert read_all(tmp_path / "t.csv.gz") == expected
    assert read_all(tmp_path / "t.csv") == expected


def test_a_header_alone_or_an_empty_file_has_no_records(tmp_path: Path) -> None:
    assert read_all(write_csv_text(tmp_path / "h.csv", "a,b\n")) == []
    assert read_all(write_csv_text(tmp_path / "e.csv", "")) == []


def test_a_big_csv_is_read_in_chunks_every_row_in_order(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("n,word\n" + "".join(f"{n},w{n}\n" for n in range(12_000)))
    chunks = list(read_records(path, chunk_rows=5000))
    assert [len(chunk) for chunk in chunks] == [5000, 5000, 2000]
    assert [record["n"] for chunk in chunks for record in chunk] == list(range(12_000))
    assert chunks[2][-1] == {"n": 11_999, "word": "w11999"}


def test_a_row_with_more_cells_than_the_header_is_named(tmp_path: Path) -> None:
    # Row numbers are data rows: the header is not counted, a blank line is, a quoted newline is not.
    path = write_csv_text(tmp_path / "t.csv", 'a,b,c,d\n1,2,3,4\n"x\ny",2,3,4\n\n1,2,3,4,5\n')
    with pytest.raises(TableError, match=r"t\.csv: row 4 has 5 cells, the header has 4"):
        read_all(path)


def test_a_header_naming_a_column_twice_or_naming_none_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r't\.csv: the header names "a" twice'):
        read_all(write_csv_text(tmp_path / "t.csv", "a,b,a\n1,2,3\n"))
    with pytest.raises(TableError, match=r"u\.csv: column 2 of the header has no name"):
        read_all(write_csv_text(tmp_path / "u.csv", "a,,c\n1,2,3\n"))


def test_bytes_that_are_not_utf8_name_their_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("a,b\n1,ok\n2,caf\xe9\n".encode("latin-1"))
    with pytest.raises(TableError, match=r"t\.csv: row 2 is not UTF-8 text"):
        read_all(path)


def test_a_header_that_is_not_utf8_is_named_the_header_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("na\xefve,b\n1,2\n".encode("latin-1"))
    with pytest.raises(TableError, match=r"t\.csv: the header row is not UTF-8 text"):
        read_all(path)


def test_chunks_hold_at_least_one_row() -> None:
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        read_records(Path("t.csv"), chunk_rows=0)


def test_unclosed_quotes_and_damaged_gzip_are_table_errors(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="row 1 cannot be read as csv"):
        read_all(write_csv_text(tmp_path / "q.csv", 'a,b\n1,"never closed\n'))
    whole = gzip.compress(b"a,b\n" + b"1,2\n" * 10_000)
    (tmp_path / "z.csv.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(TableError, match="cannot be read"):
        read_all(tmp_path / "z.csv.gz")


def test_a_missing_file_or_an_unreadable_format_is_a_table_error(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="no such file"):
        read_all(tmp_path / "missing.csv")
    with pytest.raises(TableError, match="no such file"):
        read_all(tmp_path / "missing.parquet")
    with pytest.raises(TableError, match=r"\.csv, \.csv\.gz or \.parquet"):
        read_all(tmp_path / "t.jsonl")
    assert issubclass(TableError, BadInput)


# --- csv, written and read again ------------------------------------------------------------------------------


async def test_a_csv_round_trip_keeps_values_and_types(tmp_path: Path) -> None:
    path = tmp_path / "out" / "t.csv"
    assert await write_records(path, Source(MIXED)) == 3
    back = read_all(path)
    # "" is the one value that does not come back: a csv cannot tell an empty text from a missing one.
    assert back == [dict(MIXED[0]), dict(MIXED[1]), {**MIXED[2], "name": None}]
    assert [type(record["score"]) for record in back] == [float, float, float]


async def test_a_csv_is_written_as_it_will_be_read(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    await write_records(path, chunked([{"i": 1, "f": 5.0, "b": True, "j": {"a": [1]}, "n": None}]))
    assert path.read_bytes() == b'i,f,b,j,n\r\n1,5.0,true,"{""a"":[1]}",\r\n'


async def test_a_csv_header_is_every_key_of_every_record_in_first_seen_order(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    source = Source([{"a": 1}, {"b": "x"}, {"c": True, "a": 2}], size=1)
    assert await write_records(path, source) == 3
    assert source.passes == 2
    assert read_all(path) == [
        {"a": 1, "b": None, "c": None},
        {"a": None, "b": "x", "c": None},
        {"a": 2, "b": None, "c": True},
    ]


async def test_a_gzip_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    await write_records(path, Source(MIXED))
    assert gzip.decompress(path.read_bytes()).startswith(b"id,score,ok,name,tags,meta,note\r\n")
    assert read_all(path)[0] == MIXED[0]


async def test_a_text_column_that_looks_like_integers_reads_back_as_ints(tmp_path: Path) -> None:
    # The known ambiguity: the csv keeps no type, and "12" reads as a number; "007" stays text.
    path = tmp_path / "t.csv"
    await write_records(path, chunked([{"code": "12", "zip": "007"}, {"code": "13", "zip": "12"}]))
    assert read_all(path) == [{"code": 12, "zip": "007"}, {"code": 13, "zip": "12"}]


async def test_nan_is_written_missing_as_json_has_no_nan(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    await write_records(path, chunked([{"x": float("nan")}, {"x": 1.5}]))
    assert read_all(path) == [{"x": None}, {"x": 1.5}]


async def test_a_value_json_cannot_hold_is_refused_naming_its_record(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="record 2 cannot be written"):
        await write_records(tmp_path / "t.csv", chunked([{"x": 1}, {"x": {1, 2}}]))


# --- jsonl -----------------------------------------------------------------------------------------------------


async def test_jsonl_is_written_a_line_a_record_gzip_when_named_so(tmp_path: Path) -> None:
    plain, packed = tmp_path / "t.jsonl", tmp_path / "deep" / "t.jsonl.gz"
    source = Source(MIXED)
    assert await write_records(plain, source) == 3
    assert source.passes == 1
    assert await write_records(packed, Source(MIXED)) == 3
    assert [orjson.loads(line) for line in plain.read_bytes().splitlines()] == MIXED
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()


async def test_an_unknown_suffix_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"\.jsonl, \.jsonl\.gz, \.csv, \.csv\.gz or \.parquet"):
        await write_records(tmp_path / "new" / "t.xlsx", Source(MIXED))
    assert not (tmp_path / "new").exists()


# --- parquet ---------------------------------------------------------------------------------------------------


async def test_a_parquet_round_trip_keeps_values_and_types(tmp_path: Path) -> None:
    path = tmp_path / "out" / "t.parquet"
    source = Source(MIXED)
    assert await write_records(path, source) == 3
    assert source.passes == 2
    assert read_all(path) == MIXED
    schema = pq.read_schema(path)
    assert schema.field("id").type == pa.int64()
    assert schema.field("score").type == pa.float64()
    assert schema.field("ok").type == pa.bool_()


async def test_a_parquet_column_of_ints_then_floats_is_double(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    await write_records(path, chunked([{"x": 1}, {"x": 2}], [{"x": 2.5}]))
    assert pq.read_schema(path).field("x").type == pa.float64()
    back = read_all(path)
    assert back == [{"x": 1.0}, {"x": 2.0}, {"x": 2.5}]
    assert type(back[0]["x"]) is float


async def test_a_parquet_column_null_at_first_takes_its_later_type(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    await write_records(path, chunked([{"a": 1, "s": None}], [{"a": 2, "s": "late"}]))
    assert pq.read_schema(path).field("s").type == pa.string()
    assert read_all(path) == [{"a": 1, "s": None}, {"a": 2, "s": "late"}]


async def test_parquet_records_with_differing_keys_have_every_column(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    await write_records(path, chunked([{"a": 1}, {"b": "x"}], [{"c": True, "a": 3}]))
    assert read_all(path) == [
        {"a": 1, "b": None, "c": None},
        {"a": None, "b": "x", "c": None},
        {"a": 3, "b": None, "c": True},
    ]


async def test_a_parquet_column_of_two_types_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="a parquet column holds one type"):
        await write_records(tmp_path / "t.parquet", chunked([{"x": 1}], [{"x": "one"}]))
    with pytest.raises(TableError, match='column "x" cannot be one parquet type'):
        await write_records(tmp_path / "u.parquet", chunked([{"x": 1}, {"x": "one"}]))
    assert not (tmp_path / "t.parquet").exists()


async def test_no_records_make_an_empty_table(tmp_path: Path) -> None:
    for name in ("t.parquet", "t.csv", "t.jsonl"):
        assert await write_records(tmp_path / name, chunked()) == 0
        assert (tmp_path / name).exists()
    assert read_all(tmp_path / "t.parquet") == []
    assert read_all(tmp_path / "t.csv") == []


def test_a_big_parquet_is_read_in_chunks_every_row_in_order(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    # Row groups of 3,000 rows: chunks are still 5,000 records each.
    pq.write_table(pa.table({"n": list(range(12_000))}), path, row_group_size=3000)
    chunks = list(read_records(path, chunk_rows=5000))
    assert [len(chunk) for chunk in chunks] == [5000, 5000, 2000]
    assert [record["n"] for chunk in chunks for record in chunk] == list(range(12_000))


def test_parquet_values_json_cannot_hold_are_read_as_json(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    table = pa.table(
        {
            "when": pa.array([datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)]),
            "day": pa.array([datetime.date(2024, 5, 1)]),
            "at": pa.array([datetime.time(8, 15)]),
            "took": pa.array([datetime.timedelta(seconds=90)]),
            "price": pa.array([decimal.Decimal("12.30")]),
            "text": pa.array([b"caf\xc3\xa9"], type=pa.binary()),
            "odd": pa.array([float("nan")]),
            "map": pa.array([[("k", 1)]], type=pa.map_(pa.string(), pa.int64())),
            "nested": pa.array([[{"d": datetime.date(2024, 1, 2)}]]),
            "cat": pa.array(["x"]).dictionary_encode(),
        }
    )
    pq.write_table(table, path)
    assert read_all(path) == [
        {
            "when": "2024-05-01T12:30:00+00:00",
            "day": "2024-05-01",
            "at": "08:15:00",
            "took": 90.0,
            "price": "12.30",
            "text": "café",
            "odd": None,
            "map": {"k": 1},
            "nested": [{"d": "2024-01-02"}],
            "cat": "x",
        }
    ]


def test_parquet_binary_data_that_is_not_text_is_refused_naming_its_column(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"png": pa.array([b"\x89PNG\r\n"], type=pa.binary())}), path)
    with pytest.raises(TableError, match='column "png" holds binary data that is not UTF-8 text'):
        read_all(path)


def test_a_file_that_is_not_parquet_is_a_table_error(tmp_path: Path) -> None:
    path = write_csv_text(tmp_path / "t.parquet", "a,b\n1,2\n")
    with pytest.raises(TableError, match="not a parquet file"):
        read_all(path)


async def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(
        TableError, match=r"reading .*t\.parquet needs pyarrow: pip install 'orbatch\[arrow\]'"
    ):
        read_all(tmp_path / "t.parquet")
    with pytest.raises(TableError, match=r"writing .*t\.parquet needs pyarrow"):
        await write_records(tmp_path / "t.parquet", Source(MIXED))
    assert not (tmp_path / "t.parquet").exists()
