"""OpenAI's file and batch objects read from Postgres: one statement each, counts and usage from the tallies.

A batch object is one row of `batch` and `api_batch` and the sum of the batch's tally shards (a few rows
whatever its size), so polling a batch of a million requests costs what polling one of ten does.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.api.schemas import (
    BatchError,
    BatchErrors,
    BatchEstimate,
    BatchObject,
    BatchStatusWord,
    BatchUsage,
    FileObject,
    InputTokensDetails,
    OrbatchBatch,
    OrbatchCounts,
    OutputTokensDetails,
    Pause,
    RequestCounts,
)
from jobs.core.errors import NotFound
from jobs.core.states import BatchStatus

__all__ = [
    "batch_not_found",
    "file_not_found",
    "file_object",
    "get_batch",
    "get_file",
    "list_batches",
    "list_files",
    "openai_status",
]

_TALLIES = ("pending", "running", "remote", "completed", "failed", "cancelled", "calls")
_USAGE = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")

_BATCH_SELECT = f"""
    SELECT b.id, b.status, b.models, b.max_attempts, b.max_cost, b.free_only, b.dedupe, b.metadata, b.priority,
           b.pause_reason, b.pause_message, b.resume_at, b.created_at, b.started_at, b.finished_at, b.lane,
           b.lane_note, b.expires_at, b.expired_at, b.cancelling_at, b.total, b.estimate,
           a.input_file_id, a.endpoint, a.completion_window, a.errors, a.callback_url, a.finalized_at,
           a.output_file_id, a.error_file_id, a.model, {", ".join(f"t.{c}" for c in (*_TALLIES, *_USAGE, "cost"))}
    FROM api_batch a JOIN batch b ON b.id = a.batch_id
    LEFT JOIN LATERAL (
        SELECT {", ".join(f"coalesce(sum(s.{c}), 0) AS {c}" for c in (*_TALLIES, *_USAGE, "cost"))}
        FROM batch_tally s WHERE s.batch_id = b.id
    ) t ON true
"""  # noqa: S608 - built from this module's constants; values are bound parameters

_GET_BATCH = text(_BATCH_SELECT + " WHERE a.batch_id = :id AND a.owner = :owner")

# Newest first; the cursor is the last batch of the previous page, compared as (created_at, id).
_LIST_BATCHES = text(
    _BATCH_SELECT
    + """
    WHERE a.owner = :owner
      AND (CAST(:after_at AS timestamptz) IS NULL OR (a.created_at, a.batch_id) < (:after_at, :after_id))
    ORDER BY a.created_at DESC, a.batch_id DESC LIMIT :limit
    """
)

_FILE_COLUMNS = "id, filename, purpose, bytes, created_at, expires_at"
_LIVE_FILE = "(expires_at IS NULL OR expires_at > now())"


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def batch_not_found(batch_id: str) -> NotFound:
    """No such batch for this caller (another owner's answers the same: ids leak nothing)."""
    return NotFound(f"No batch found with id '{batch_id[:100]}'.", param="batch_id", code="batch_not_found")


def file_not_found(file_id: str) -> NotFound:
    """No such file for this caller (another owner's answers the same)."""
    return NotFound(f"No such File object: {file_id[:100]}", param="file_id", code="file_not_found")


def openai_status(status: str, finalized: bool) -> BatchStatusWord:
    """The status OpenAI's clients know: `paused` is `in_progress`, and a batch that ended is `finalizing`
    (or `cancelling`) until its output and error files are made, so that a client seeing `completed` finds
    `output_file_id` set."""
    if status == BatchStatus.PAUSED:
        return "in_progress"
    if status in (BatchStatus.COMPLETED, BatchStatus.EXPIRED) and not finalized:
        return "finalizing"
    if status == BatchStatus.CANCELLED and not finalized:
        return "cancelling"
    word: BatchStatusWord = status  # type: ignore[assignment]
    return word


def _batch(row: Any) -> BatchObject:
    finalized = row.finalized_at is not None
    status = openai_status(row.status, finalized)
    ended = status in ("completed", "expired", "cancelled")
    counts = {c: int(getattr(row, c)) for c in _TALLIES}
    input_tokens, output_tokens = int(row.prompt_tokens), int(row.completion_tokens)
    errors = None
    if row.errors:
        errors = BatchErrors(data=[BatchError(**e) for e in row.errors])
    return BatchObject(
        id=row.id,
        endpoint=row.endpoint,
        errors=errors,
        input_file_id=row.input_file_id,
        completion_window=row.completion_window,
        status=status,
        output_file_id=row.output_file_id if ended else None,
        error_file_id=row.error_file_id if ended else None,
        created_at=int(row.created_at.timestamp()),
        in_progress_at=_epoch(row.started_at),
        expires_at=_epoch(row.expires_at),
        finalizing_at=_epoch(row.finished_at) if status in ("finalizing", "completed", "expired") else None,
        completed_at=_epoch(row.finalized_at) if status == "completed" else None,
        failed_at=_epoch(row.finished_at) if status == "failed" else None,
        expired_at=_epoch(row.expired_at) if row.status == BatchStatus.EXPIRED else None,
        cancelling_at=_epoch(row.cancelling_at),
        cancelled_at=_epoch(row.finished_at) if status == "cancelled" else None,
        request_counts=RequestCounts(
            total=int(row.total), completed=counts["completed"], failed=counts["failed"]
        ),
        usage=BatchUsage(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=int(row.cached_tokens)),
            output_tokens=output_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=int(row.reasoning_tokens)),
            total_tokens=input_tokens + output_tokens,
        ),
        metadata=row.metadata,
        model=row.model,
        orbatch=OrbatchBatch(
            status=row.status,
            pause=None
            if row.pause_reason is None
            else Pause(reason=row.pause_reason, message=row.pause_message, resume_at=_epoch(row.resume_at)),
            models=list(row.models),
            max_attempts=row.max_attempts,
            free_only=row.free_only,
            priority=row.priority,
            dedupe=row.dedupe,
            cost_usd=str(Decimal(row.cost)),
            max_cost_usd=None if row.max_cost is None else str(row.max_cost),
            calls=counts["calls"],
            request_counts=OrbatchCounts(
                pending=counts["pending"],
                running=counts["running"],
                cancelled=counts["cancelled"],
                remote=counts["remote"],
            ),
            callback_url=row.callback_url,
            estimate=None if row.estimate is None else BatchEstimate.model_validate(row.estimate),
            lane=row.lane,
            lane_note=row.lane_note,
        ),
    )


async def get_batch(conn: AsyncConnection, owner: str, batch_id: str) -> BatchObject:
    """The owner's batch; NotFound for any other id."""
    row = (await conn.execute(_GET_BATCH, {"id": batch_id, "owner": owner})).one_or_none()
    if row is None:
        raise batch_not_found(batch_id)
    return _batch(row)


async def list_batches(
    conn: AsyncConnection, owner: str, after: str | None, limit: int
) -> tuple[list[BatchObject], bool]:
    """A page of the owner's batches, newest first, after the batch `after`; and whether more follow."""
    after_at = None
    if after is not None:
        after_at = (
            await conn.execute(
                text("SELECT created_at FROM api_batch WHERE batch_id = :id AND owner = :owner"),
                {"id": after, "owner": owner},
            )
        ).scalar_one_or_none()
        if after_at is None:
            raise NotFound(f"No batch found with id '{after[:100]}' to list after.", param="after")
    rows = (
        await conn.execute(
            _LIST_BATCHES, {"owner": owner, "after_at": after_at, "after_id": after, "limit": limit + 1}
        )
    ).all()
    return [_batch(r) for r in rows[:limit]], len(rows) > limit


def file_object(row: Any) -> FileObject:
    """An `api_file` row as OpenAI's file object."""
    return FileObject(
        id=row.id,
        bytes=int(row.bytes),
        created_at=int(row.created_at.timestamp()),
        filename=row.filename,
        purpose=row.purpose,
        expires_at=_epoch(row.expires_at),
    )


async def get_file(conn: AsyncConnection, owner: str, file_id: str) -> Any:
    """The owner's live file row (with `batch_id` and `kind` for an output file); NotFound for any other id."""
    row = (
        await conn.execute(
            text(
                f"SELECT {_FILE_COLUMNS}, sha256, batch_id, kind FROM api_file"  # noqa: S608 - columns and conditions are this module's constants; values are bound
                f" WHERE id = :id AND owner = :owner AND {_LIVE_FILE} AND purpose <> ''"
            ),
            {"id": file_id, "owner": owner},
        )
    ).one_or_none()
    if row is None:
        raise file_not_found(file_id)
    return row


async def list_files(
    conn: AsyncConnection,
    owner: str,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: Literal["asc", "desc"],
) -> tuple[list[FileObject], bool]:
    """A page of the owner's files by creation time in `order`, after the file `after`; and whether more follow."""
    cursor = None
    if after is not None:
        cursor = (
            await conn.execute(
                text("SELECT created_at, id FROM api_file WHERE id = :id AND owner = :owner"),
                {"id": after, "owner": owner},
            )
        ).one_or_none()
        if cursor is None:
            raise NotFound(f"No such File object to list after: {after[:100]}", param="after")
    compare, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
    rows = (
        await conn.execute(
            text(
                f"SELECT {_FILE_COLUMNS} FROM api_file WHERE owner = :owner AND {_LIVE_FILE} AND purpose <> ''"  # noqa: S608 - columns, conditions and the order are constants; values are bound
                " AND (CAST(:purpose AS text) IS NULL OR purpose = :purpose)"
                f" AND (CAST(:after_at AS timestamptz) IS NULL OR (created_at, id) {compare} (:after_at, :after_id))"
                f" ORDER BY created_at {direction}, id {direction} LIMIT :limit"
            ),
            {
                "owner": owner,
                "purpose": purpose,
                "after_at": None if cursor is None else cursor.created_at,
                "after_id": None if cursor is None else cursor.id,
                "limit": limit + 1,
            },
        )
    ).all()
    return [file_object(r) for r in rows[:limit]], len(rows) > limit
