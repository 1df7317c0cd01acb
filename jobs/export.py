"""Export: a batch's results as OpenAI Batch output lines and its failures as an error file, streamed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.formats import error_line

__all__ = ["ExportReport", "export_results", "open_output"]

_ROWS = """
    SELECT r.id, r.custom_id, r.status, r.last_error, res.body::text AS body, a.generation_id,
           a.http_status, la.error_code, la.error_message, la.http_status AS last_status
    FROM request r
    LEFT JOIN result res ON res.request_id = r.id
    LEFT JOIN attempt a ON a.id = res.attempt_id
    LEFT JOIN LATERAL (
        SELECT error_code, error_message, http_status FROM attempt
        WHERE request_id = r.id ORDER BY number DESC LIMIT 1
    ) la ON r.status = 'failed'
    WHERE r.batch_id = $1 AND r.status IN ('completed', 'failed')
    ORDER BY r.id
"""

_EXPORT_CHUNK = 2000


@dataclass(slots=True)
class ExportReport:
    """How many lines went to each file."""

    completed: int = 0
    failed: int = 0


def _result_line(
    request_id: int, custom_id: str, generation_id: str | None, status: int | None, body: str
) -> bytes:
    # The stored body is spliced in as text: re-encoding a million bodies would dominate the export.
    head = orjson.dumps({"id": f"batch_req_{request_id}", "custom_id": custom_id})[:-1]
    response = orjson.dumps({"status_code": status or 200, "request_id": generation_id})[:-1]
    return b'%s,"response":%s,"body":%s},"error":null}\n' % (head, response, body.encode())


async def export_results(
    engine: AsyncEngine, batch_id: str, out: IO[bytes], errors: IO[bytes] | None
) -> ExportReport:
    """Write completed requests to `out` and failed ones to `errors`, in line order."""
    report = ExportReport()
    async with engine.connect() as conn:
        raw: Any = (await conn.get_raw_connection()).driver_connection
        # One read-only snapshot streamed through asyncpg's server-side cursor: memory is one prefetch of rows
        # whatever the batch's size.
        async with raw.transaction(readonly=True, isolation="repeatable_read"):
            ok: list[bytes] = []
            bad: list[bytes] = []
            async for row in raw.cursor(_ROWS, batch_id, prefetch=_EXPORT_CHUNK):
                if row["status"] == "completed":
                    ok.append(
                        _result_line(
                            row["id"], row["custom_id"], row["generation_id"], row["http_status"], row["body"]
                        )
                    )
                else:
                    line = error_line(
                        row["custom_id"],
                        row["id"],
                        row["error_code"] or "request_failed",
                        row["error_message"] or row["last_error"] or "the request failed",
                        status_code=row["last_status"],
                    )
                    bad.append(orjson.dumps(line) + b"\n")
                if len(ok) + len(bad) >= _EXPORT_CHUNK:
                    _flush(ok, bad, out, errors, report)
            _flush(ok, bad, out, errors, report)
    return report


def _flush(
    ok: list[bytes], bad: list[bytes], out: IO[bytes], errors: IO[bytes] | None, report: ExportReport
) -> None:
    out.write(b"".join(ok))
    if errors is not None:
        errors.write(b"".join(bad))
    report.completed += len(ok)
    report.failed += len(bad)
    ok.clear()
    bad.clear()


def open_output(path: Path) -> IO[bytes]:
    """Open an output file for writing, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")
