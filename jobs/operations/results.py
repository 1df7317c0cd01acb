"""Export: a batch's results as OpenAI Batch output lines (or records with their answers), streamed."""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.errors import BadInput
from jobs.core.states import RequestStatus
from jobs.formats.output_lines import ANSWER_FIELD, error_line, merge_answer, result_line
from jobs.formats.tables import table_format, write_records
from jobs.formats.votes import AGREEMENT_FIELD, TIES_FIELD, VOTES_FIELD
from jobs.operations.rows import (
    BATCH_COLUMNS,
    CONTENT,
    EXPORT_CHUNK,
    RECORD_COLUMNS,
    WHERE,
    error_of,
    in_order,
    record_fields,
)
from jobs.operations.rows import (
    query as export_query,
)
from jobs.operations.rows import (
    rows as stream_rows,
)
from jobs.operations.votes import dumps, vote_models, voted_record_chunks, voted_records

__all__ = [
    "STDOUT",
    "AnswerRow",
    "ExportFormat",
    "ExportReport",
    "Unfinished",
    "answer_rows",
    "check_destinations",
    "destination",
    "export_in_order",
    "export_results",
    "export_to_files",
    "open_output",
    "stream_file",
]

ExportFormat = Literal["batch", "records"]


@dataclass(slots=True, frozen=True)
class Unfinished:
    """How requests that never finished are reported in an error file (a batch that expired or was cancelled)."""

    code: str
    message: str


@dataclass(slots=True)
class ExportReport:
    """How many lines went to each file."""

    completed: int = 0
    failed: int = 0


@dataclass(slots=True, frozen=True)
class AnswerRow:
    """One request of a batch as a table's row gets it: where it was, its answer, or why it has none."""

    line_no: int
    status: str
    # The reply's text; for a structured request, the JSON text of its answer.
    content: str | None
    structured: bool
    # `code: message` for a failed request; for one not finished, what it is waiting for.
    error: str | None
    # The record the request was made from (its custom_id alone for a chat request), when asked for.
    record: dict[str, Any] | None = None
    # More of the row's fields: a vote's agreement, ties and each model's answer.
    extra: dict[str, Any] | None = None


_ANSWER_COLUMNS = "r.line_no," + CONTENT
_ANSWER_ROWS = export_query(_ANSWER_COLUMNS + ", NULL AS record", "true").replace(
    "ORDER BY r.id", "ORDER BY r.line_no"
)
_ANSWER_ROWS_WITH_RECORDS = export_query(_ANSWER_COLUMNS + ", r.record::text AS record", "true").replace(
    "ORDER BY r.id", "ORDER BY r.line_no"
)


async def answer_rows(
    engine: AsyncEngine, batch_id: str, with_records: bool = False
) -> AsyncGenerator[list[AnswerRow]]:
    """Every request of the batch in line order, a few thousand at a time, from one snapshot; a vote batch's
    records each once, its majority as the answer and the rest of its vote in `extra`."""
    if await vote_models(engine, batch_id) is not None:
        async for voted in _voted_rows(engine, batch_id, with_records):
            yield voted
        return
    chunk: list[AnswerRow] = []
    query = _ANSWER_ROWS_WITH_RECORDS if with_records else _ANSWER_ROWS
    fields = await record_fields(engine, batch_id) if with_records else None
    async with contextlib.aclosing(stream_rows(engine, query, batch_id)) as rows:
        async for row in rows:
            status = row["status"]
            error = None
            if status == RequestStatus.FAILED:
                code, message = error_of(row)
                error = f"{code}: {message}"
            elif status != RequestStatus.COMPLETED:
                error = f"not_finished: the request is {status}"
            record = None
            if with_records:
                record = (
                    in_order(orjson.loads(row["record"]), fields)
                    if row["record"]
                    else {"custom_id": row["custom_id"]}
                )
            chunk.append(AnswerRow(row["line_no"], status, row["content"], row["structured"], error, record))
            if len(chunk) >= EXPORT_CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


async def _voted_rows(
    engine: AsyncEngine, batch_id: str, with_records: bool
) -> AsyncGenerator[list[AnswerRow]]:
    chunk: list[AnswerRow] = []
    async for voted in voted_records(engine, batch_id):
        vote = voted.vote
        error = None
        if not voted.finished:
            status, error = RequestStatus.RUNNING.value, "not_finished: some models have not answered yet"
        elif voted.failed:
            status, error = RequestStatus.FAILED.value, voted.as_error()["error"]["message"]
        else:
            status = RequestStatus.COMPLETED.value
        content = None
        value: Any = None
        if error is None:
            # An answer that is not an object (no schema asked) is the majority's text itself.
            value = vote.majority
            if set(vote.majority) == {ANSWER_FIELD} and not any(
                isinstance(a, dict) for a in vote.answers.values()
            ):
                value = vote.majority[ANSWER_FIELD]
            content = value if isinstance(value, str) else orjson.dumps(value).decode()
        # A plain-text majority is text, as a batch without a vote gives it ("42" stays a string).
        structured = content is None or not isinstance(value, str)
        extra = {AGREEMENT_FIELD: vote.agreement, TIES_FIELD: vote.ties or None, VOTES_FIELD: vote.answers}
        record = voted.record if with_records else None
        chunk.append(AnswerRow(voted.line_no, status, content, structured, error, record, extra))
        if len(chunk) >= EXPORT_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_SPLITS = text("SELECT options ? 'long' FROM batch WHERE id = :id")


async def _splits(engine: AsyncEngine, batch_id: str) -> bool:
    """Whether the batch summarises records too long for its chain in parts (`--long split`)."""
    async with engine.connect() as conn:
        return bool((await conn.execute(_SPLITS, {"id": batch_id})).scalar())


async def export_results(
    engine: AsyncEngine,
    batch_id: str,
    out: IO[bytes],
    errors: IO[bytes] | None,
    fmt: ExportFormat = "batch",
) -> ExportReport:
    """Write completed requests to `out` and failed ones to `errors`, in line order.

    `batch`: OpenAI Batch output and error lines. `records`: each input record with its answer merged in
    (the fields of a structured answer, else `answer`), failures with an `error` field.
    """
    report = ExportReport()
    ok: list[bytes] = []
    bad: list[bytes] = []
    columns = BATCH_COLUMNS if fmt == "batch" else RECORD_COLUMNS
    sql = export_query(columns, WHERE["both"])
    fields = await record_fields(engine, batch_id) if fmt == "records" else None
    splits = fmt == "records" and await _splits(engine, batch_id)
    async with contextlib.aclosing(stream_rows(engine, sql, batch_id)) as rows:
        async for row in rows:
            _add_row(row, fmt, ok, bad, fields=fields, splits=splits)
            if len(ok) + len(bad) >= EXPORT_CHUNK:
                _flush(ok, bad, out, errors, report)
    _flush(ok, bad, out, errors, report)
    return report


async def export_in_order(engine: AsyncEngine, batch_id: str, out: IO[bytes]) -> ExportReport:
    """Every request of the batch as OpenAI Batch lines in line order, output and error lines together."""
    report = ExportReport()
    lines: list[bytes] = []
    unfinished = Unfinished("not_finished", "the request did not finish")
    async with contextlib.aclosing(
        stream_rows(engine, export_query(BATCH_COLUMNS, "true"), batch_id)
    ) as rows:
        async for row in rows:
            _add_row(row, "batch", lines, lines, unfinished)
            if row["status"] == RequestStatus.COMPLETED:
                report.completed += 1
            else:
                report.failed += 1
            if len(lines) >= EXPORT_CHUNK:
                _write_all(out, b"".join(lines))
                lines.clear()
    _write_all(out, b"".join(lines))
    return report


async def stream_file(
    engine: AsyncEngine,
    batch_id: str,
    kind: Literal["output", "errors"],
    unfinished: Unfinished | None = None,
) -> AsyncGenerator[bytes]:
    """A batch's output or error file as OpenAI Batch lines, a few thousand lines a piece, in line order.

    With `unfinished`, requests that never finished are error lines with its code and message.
    """
    where = WHERE["errors_and_unfinished" if kind == "errors" and unfinished else kind]
    lines: list[bytes] = []
    async with contextlib.aclosing(stream_rows(engine, export_query(BATCH_COLUMNS, where), batch_id)) as rows:
        async for row in rows:
            _add_row(row, "batch", lines, lines, unfinished)
            if len(lines) >= EXPORT_CHUNK:
                yield b"".join(lines)
                lines.clear()
    if lines:
        yield b"".join(lines)


def _add_row(
    row: Any,
    fmt: ExportFormat,
    ok: list[bytes],
    bad: list[bytes],
    unfinished: Unfinished | None = None,
    fields: list[str] | None = None,
    splits: bool = False,
) -> None:
    """One request's line into `ok` or `bad`; `splits`: the batch summarises long records in parts, so every
    record says how many calls made its answer (one, for a record sent whole)."""
    completed = row["status"] == RequestStatus.COMPLETED
    if unfinished is not None and row["status"] not in (RequestStatus.COMPLETED, RequestStatus.FAILED):
        line = error_line(row["custom_id"], row["id"], unfinished.code, unfinished.message)
        bad.append(orjson.dumps(line) + b"\n")
        return
    if fmt == "batch":
        if completed:
            ok.append(
                result_line(
                    row["id"], row["custom_id"], row["generation_id"], row["http_status"], row["body"]
                )
            )
        else:
            code, message = error_of(row)
            line = error_line(row["custom_id"], row["id"], code, message, status_code=row["last_status"])
            bad.append(orjson.dumps(line) + b"\n")
    else:
        record = (
            in_order(orjson.loads(row["record"]), fields)
            if row["record"]
            else {"custom_id": row["custom_id"]}
        )
        if completed:
            merged = merge_answer(record, row["content"], row["structured"])
            if row.get("calls") is not None:
                merged["calls"] = row["calls"]
            elif splits:
                merged["calls"] = 1
            ok.append(orjson.dumps(merged) + b"\n")
        else:
            code, message = error_of(row)
            bad.append(orjson.dumps({**record, "error": {"code": code, "message": message}}) + b"\n")


def _flush(
    ok: list[bytes], bad: list[bytes], out: IO[bytes], errors: IO[bytes] | None, report: ExportReport
) -> None:
    _write_all(out, b"".join(ok))
    if errors is not None:
        _write_all(errors, b"".join(bad))
    report.completed += len(ok)
    report.failed += len(bad)
    ok.clear()
    bad.clear()


# `-o -`: standard output, as the convention goes (a file named `-` is `$PWD/-`).
STDOUT = Path("-")


def destination(path: Path) -> str:
    """Where output goes, for a message: the path, or `stdout`."""
    return "stdout" if path == STDOUT else str(path)


def check_destinations(output: Path, errors: Path | None) -> None:
    """Refuse results and failures both on stdout, where they could not be told apart."""
    if output == STDOUT and errors == STDOUT:
        raise BadInput(
            "--errors -: the results already go to stdout; give --errors a file (or -o FILE for the results)",
            param="errors",
        )


def _write_all(f: IO[bytes], data: bytes) -> None:
    # A write to a pipe can stop short (a signal, or the reader gone), which a buffered file returns, not raises.
    view = memoryview(data)
    while view:
        written = f.write(view)
        if not written:
            raise OSError(errno.EIO, "the output took no bytes")
        view = view[written:]


def _table_of(path: Path | None) -> str | None:
    """`csv` or `parquet` for a record table named by its suffix; None for JSONL and stdout."""
    if path is None or path == STDOUT:
        return None
    kind = table_format(path)
    return kind if kind in ("csv", "parquet") else None


async def _record_chunks(
    engine: AsyncEngine, batch_id: str, which: str
) -> AsyncGenerator[list[dict[str, Any]]]:
    """The batch's completed (or failed) requests as records with their answers (or errors), in line order; a
    vote batch's records each once, with its vote (`disagreements`: those the models do not all agree on)."""
    if await vote_models(engine, batch_id) is not None:
        async for voted in voted_record_chunks(engine, batch_id, which):  # type: ignore[arg-type]
            yield voted
        return
    ok: list[bytes] = []
    bad: list[bytes] = []
    out = ok if which == "output" else bad
    fields = await record_fields(engine, batch_id)
    splits = await _splits(engine, batch_id)
    async with contextlib.aclosing(
        stream_rows(engine, export_query(RECORD_COLUMNS, WHERE[which]), batch_id)
    ) as rows:
        async for row in rows:
            _add_row(row, "records", ok, bad, fields=fields, splits=splits)
            if len(out) >= EXPORT_CHUNK:
                yield [orjson.loads(line) for line in out]
                out.clear()
    if out:
        yield [orjson.loads(line) for line in out]


async def export_to_files(
    engine: AsyncEngine,
    batch_id: str,
    output: Path,
    errors: Path | None,
    fmt: ExportFormat = "batch",
    disagreements: bool = False,
) -> ExportReport:
    """export_results into OUTPUT (and ERRORS, if given), creating their folders; `-` is stdout.

    With `records`, a path ending in .csv or .parquet gets a table of that format (each file by its own suffix).
    A vote batch's records are one per record, its vote tallied; `disagreements`: only those the models do not
    all agree on (records, whatever `fmt`).
    """
    check_destinations(output, errors)
    voting = await vote_models(engine, batch_id) is not None
    if disagreements and not voting:
        raise BadInput(
            "--disagreements is for a batch submitted with --vote: only a vote has models to disagree",
            param="disagreements",
        )
    if disagreements:
        fmt = "records"
    tables = (_table_of(output), _table_of(errors))
    if any(tables):
        if fmt != "records":
            raise BadInput(
                "a .csv or .parquet output holds records: add --format records (OpenAI Batch lines are JSONL)",
                param="format",
            )
        return await _export_tables(engine, batch_id, output, errors, disagreements)
    if voting and fmt == "records":
        return await _export_votes(engine, batch_id, output, errors, disagreements)
    with _sink(output) as out_f:
        if errors is None:
            return await export_results(engine, batch_id, out_f, None, fmt)
        with _sink(errors) as err_f:
            return await export_results(engine, batch_id, out_f, err_f, fmt)


async def _export_votes(
    engine: AsyncEngine, batch_id: str, output: Path, errors: Path | None, disagreements: bool
) -> ExportReport:
    """A vote batch's records as JSON lines: each record once with its vote, those no model answered apart."""
    report = ExportReport()
    with _sink(output) as out_f:
        async for chunk in voted_record_chunks(
            engine, batch_id, "disagreements" if disagreements else "output"
        ):
            _write_all(out_f, dumps(chunk))
            report.completed += len(chunk)
    if errors is not None:
        with _sink(errors) as err_f:
            async for chunk in voted_record_chunks(engine, batch_id, "errors"):
                _write_all(err_f, dumps(chunk))
                report.failed += len(chunk)
    else:
        # Counted all the same, so that what was written says how many records no model answered.
        async for chunk in voted_record_chunks(engine, batch_id, "errors"):
            report.failed += len(chunk)
    return report


async def _export_tables(
    engine: AsyncEngine, batch_id: str, output: Path, errors: Path | None, disagreements: bool = False
) -> ExportReport:
    """Records with their answers to OUTPUT and failures to ERRORS, each in the format its suffix names."""
    report = ExportReport()
    report.completed = await _write_table(
        engine, batch_id, output, "disagreements" if disagreements else "output"
    )
    if errors is not None:
        report.failed = await _write_table(engine, batch_id, errors, "errors")
    return report


async def _write_table(engine: AsyncEngine, batch_id: str, path: Path, which: str) -> int:
    if path == STDOUT:
        count = 0
        async for chunk in _record_chunks(engine, batch_id, which):
            _write_all(sys.stdout.buffer, b"".join(orjson.dumps(r) + b"\n" for r in chunk))
            count += len(chunk)
        sys.stdout.buffer.flush()
        return count
    return await write_records(path, lambda: _record_chunks(engine, batch_id, which))


@contextlib.contextmanager
def _sink(path: Path) -> Iterator[IO[bytes]]:
    if path != STDOUT:
        with open_output(path) as f:
            yield f
        return
    # Bytes go under the text layer: whatever it holds goes first, and stdout stays open after.
    sys.stdout.flush()
    yield sys.stdout.buffer
    sys.stdout.buffer.flush()


def open_output(path: Path) -> IO[bytes]:
    """Open an output file for writing, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")
