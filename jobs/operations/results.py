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
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.errors import BadInput
from jobs.core.sql import states
from jobs.core.states import RequestStatus
from jobs.formats.output_lines import error_line, merge_answer, result_line

__all__ = [
    "STDOUT",
    "ExportFormat",
    "ExportReport",
    "Unfinished",
    "check_destinations",
    "destination",
    "export_results",
    "export_to_files",
    "open_output",
    "stream_file",
]

ExportFormat = Literal["batch", "records"]

# Run through asyncpg's cursor, not SQLAlchemy: `_query` fills in the state names, the columns and the choice.
_ROWS = """
    SELECT r.id, r.custom_id, r.status, r.last_error, {columns}, a.generation_id,
           a.http_status, la.error_code, la.error_message, la.http_status AS last_status
    FROM request r
    LEFT JOIN result res ON res.request_id = r.id
    LEFT JOIN attempt a ON a.id = res.attempt_id
    LEFT JOIN LATERAL (
        SELECT error_code, error_message, http_status FROM attempt
        WHERE request_id = r.id ORDER BY number DESC LIMIT 1
    ) la ON r.status = {R.FAILED}
    WHERE r.batch_id = $1 AND {where}
    ORDER BY r.id
"""

# Which requests each export reads: `results` writes both files in one pass; the API serves one at a time.
_WHERE = {
    "both": "r.status IN ({R.COMPLETED}, {R.FAILED})",
    "output": "r.status = {R.COMPLETED}",
    "errors": "r.status = {R.FAILED}",
    "errors_and_unfinished": "r.status <> {R.COMPLETED}",
}


def _query(columns: str, where: str) -> str:
    """The export query for these columns and this choice of requests, its state names filled in."""
    return states(_ROWS.replace("{columns}", columns).replace("{where}", where))


_EXPORT_CHUNK = 2000


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


_BATCH_COLUMNS = "res.body::text AS body"
_RECORD_COLUMNS = (
    "r.record::text AS record, res.body->'choices'->0->'message'->>'content' AS content,"
    " coalesce(r.body->'response_format'->>'type' = 'json_schema', false) AS structured"
)


async def _rows(engine: AsyncEngine, sql: str, *args: Any) -> AsyncGenerator[Any]:
    async with engine.connect() as conn:
        raw: Any = (await conn.get_raw_connection()).driver_connection
        # One read-only snapshot streamed through asyncpg's server-side cursor: memory is one prefetch of rows
        # whatever the batch's size.
        async with raw.transaction(readonly=True, isolation="repeatable_read"):
            async for row in raw.cursor(sql, *args, prefetch=_EXPORT_CHUNK):
                yield row


def _error_of(row: Any) -> tuple[str, str]:
    return (
        row["error_code"] or "request_failed",
        row["error_message"] or row["last_error"] or "the request failed",
    )


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
    columns = _BATCH_COLUMNS if fmt == "batch" else _RECORD_COLUMNS
    query = _query(columns, _WHERE["both"])
    async with contextlib.aclosing(_rows(engine, query, batch_id)) as rows:
        async for row in rows:
            _add_row(row, fmt, ok, bad)
            if len(ok) + len(bad) >= _EXPORT_CHUNK:
                _flush(ok, bad, out, errors, report)
    _flush(ok, bad, out, errors, report)
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
    where = _WHERE["errors_and_unfinished" if kind == "errors" and unfinished else kind]
    lines: list[bytes] = []
    async with contextlib.aclosing(_rows(engine, _query(_BATCH_COLUMNS, where), batch_id)) as rows:
        async for row in rows:
            _add_row(row, "batch", lines, lines, unfinished)
            if len(lines) >= _EXPORT_CHUNK:
                yield b"".join(lines)
                lines.clear()
    if lines:
        yield b"".join(lines)


def _add_row(
    row: Any, fmt: ExportFormat, ok: list[bytes], bad: list[bytes], unfinished: Unfinished | None = None
) -> None:
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
            code, message = _error_of(row)
            line = error_line(row["custom_id"], row["id"], code, message, status_code=row["last_status"])
            bad.append(orjson.dumps(line) + b"\n")
    else:
        record = orjson.loads(row["record"]) if row["record"] else {"custom_id": row["custom_id"]}
        if completed:
            ok.append(orjson.dumps(merge_answer(record, row["content"], row["structured"])) + b"\n")
        else:
            code, message = _error_of(row)
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


async def export_to_files(
    engine: AsyncEngine, batch_id: str, output: Path, errors: Path | None, fmt: ExportFormat = "batch"
) -> ExportReport:
    """export_results into OUTPUT (and ERRORS, if given), creating their folders; `-` is stdout."""
    check_destinations(output, errors)
    with _sink(output) as out_f:
        if errors is None:
            return await export_results(engine, batch_id, out_f, None, fmt)
        with _sink(errors) as err_f:
            return await export_results(engine, batch_id, out_f, err_f, fmt)


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
