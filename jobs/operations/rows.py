"""Reading a batch's requests for export: the query, one snapshot streamed through a cursor, and what a row says
(its record in input order, its error)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.sql import states

__all__ = [
    "BATCH_COLUMNS",
    "CONTENT",
    "EXPORT_CHUNK",
    "RECORD_COLUMNS",
    "WHERE",
    "answer_schema",
    "error_of",
    "in_order",
    "query",
    "record_fields",
    "record_of",
    "rows",
]

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
WHERE = {
    "both": "r.status IN ({R.COMPLETED}, {R.FAILED})",
    "output": "r.status = {R.COMPLETED}",
    "errors": "r.status = {R.FAILED}",
    "errors_and_unfinished": "r.status <> {R.COMPLETED}",
}


def query(columns: str, where: str) -> str:
    """The export query for these columns and this choice of requests, its state names filled in."""
    return states(_ROWS.replace("{columns}", columns).replace("{where}", where))


EXPORT_CHUNK = 2000


BATCH_COLUMNS = "res.body::text AS body"
# A row's answer: a chat reply's text, or an embeddings request's vector (a list of vectors for a list of
# inputs, in input order) as JSON text; read from the stored response, not stored twice. An embeddings answer
# is JSON, so it is `structured`.
CONTENT = """
    CASE WHEN r.body ? 'messages' THEN res.body->'choices'->0->'message'->>'content'
         WHEN jsonb_typeof(r.body->'input') = 'array' AND jsonb_typeof(r.body->'input'->0) <> 'number'
         THEN (SELECT jsonb_agg(d.value->'embedding' ORDER BY coalesce((d.value->>'index')::int, d.n - 1))
               FROM jsonb_array_elements(res.body->'data') WITH ORDINALITY AS d(value, n))::text
         ELSE (res.body->'data'->0->'embedding')::text END AS content,
    (coalesce(r.body->'response_format'->>'type' = 'json_schema', false) OR NOT r.body ? 'messages')
        AS structured"""
# A record summarised in parts (`--long split`) says how many answered calls made its summary: its chunks',
# its combines' and the final one's (failed or abandoned calls are in `usage`, not here).
_CALLS = """
    CASE WHEN r.split_tokens IS NOT NULL AND r.status = {R.COMPLETED}
         THEN (SELECT count(*) FROM attempt c
               WHERE c.request_id = r.id AND c.part IS NOT NULL AND c.outcome = {O.SUCCESS}) END AS calls"""
RECORD_COLUMNS = "r.record::text AS record," + _CALLS + "," + CONTENT


async def rows(engine: AsyncEngine, sql: str, *args: Any) -> AsyncGenerator[Any]:
    async with engine.connect() as conn:
        raw: Any = (await conn.get_raw_connection()).driver_connection
        # One read-only snapshot streamed through asyncpg's server-side cursor: memory is one prefetch of rows
        # whatever the batch's size.
        async with raw.transaction(readonly=True, isolation="repeatable_read"):
            async for row in raw.cursor(sql, *args, prefetch=EXPORT_CHUNK):
                yield row


async def record_fields(engine: AsyncEngine, batch_id: str) -> list[str] | None:
    """The batch's record fields in their input order (revision 0011); None when it kept none."""
    async with engine.connect() as conn:
        fields = (await conn.execute(_FIELDS, {"id": batch_id})).scalar()
    return list(fields) if fields else None


_FIELDS = text("SELECT record_fields FROM batch WHERE id = :id")


def in_order(record: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """The record with its fields in the input's order (`jsonb` kept them in its own); others after."""
    if not fields:
        return record
    ordered = {key: record[key] for key in fields if key in record}
    if len(ordered) != len(record):
        ordered.update(record)
    return ordered


def error_of(row: Any) -> tuple[str, str]:
    return (
        row["error_code"] or "request_failed",
        row["error_message"] or row["last_error"] or "the request failed",
    )


def record_of(row: Any, fields: list[str] | None) -> dict[str, Any]:
    """The record a row's request was made from, in input order; its custom_id alone for a chat request."""
    return in_order(orjson.loads(row["record"]), fields) if row["record"] else {"custom_id": row["custom_id"]}


_SCHEMA = text("SELECT template->'json_schema' FROM batch WHERE id = :id")


async def answer_schema(engine: AsyncEngine, batch_id: str) -> dict[str, Any] | None:
    """The JSON Schema the batch's answers follow (its template's), if it asked for one."""
    async with engine.connect() as conn:
        schema = (await conn.execute(_SCHEMA, {"id": batch_id})).scalar()
    return schema if isinstance(schema, dict) else None
