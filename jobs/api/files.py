"""`/v1/files`: upload, list, retrieve, download and delete, as OpenAI's Files API does them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import text

from jobs.api.auth import Authorized
from jobs.api.finalizer import unfinished_for
from jobs.api.objects import file_not_found, file_object, get_file, list_files
from jobs.api.responses import ERRORS, json_response
from jobs.api.schemas import FileDeleted, FileList, FileObject
from jobs.api.state import api_state
from jobs.api.storage import file_blocks
from jobs.api.uploads import receive_upload
from jobs.core.constants import FILE_LIST_MAX
from jobs.operations.results import stream_file

__all__ = ["router"]

router = APIRouter(tags=["files"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    # Any other field is refused (`Unrecognized request argument`), and the expiry's two come
                    # together.
                    "additionalProperties": False,
                    "dependentRequired": {
                        "expires_after[anchor]": ["expires_after[seconds]"],
                        "expires_after[seconds]": ["expires_after[anchor]"],
                    },
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The JSONL file."},
                        "purpose": {"type": "string", "enum": ["batch"]},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
                    },
                }
            }
        },
    }
}


@router.post(
    "/files",
    response_model=FileObject,
    responses={**ERRORS, 408: {"description": "The upload stalled."}},
    openapi_extra=_UPLOAD_BODY,
    summary="Upload a file",
)
async def create_file(request: Request, caller: Authorized) -> Response:
    """Upload a JSONL file of requests (`purpose=batch`), streamed to Postgres as it arrives.

    Larger than ORBATCH_MAX_UPLOAD_BYTES (200 MB by default): 413. Cut off, stalled or malformed: an error,
    and nothing stored.
    """
    state = api_state(request)
    file_id = await receive_upload(request, state, caller.owner)
    async with state.reads.connect() as conn:
        return json_response(file_object(await get_file(conn, caller.owner, file_id)))


@router.get("/files", response_model=FileList, responses=ERRORS, summary="List files")
async def list_files_route(
    request: Request,
    caller: Authorized,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=FILE_LIST_MAX)] = FILE_LIST_MAX,
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    """The key's files, uploads and batch outputs, by creation time; `after` a file id for the next page."""
    async with api_state(request).reads.connect() as conn:
        files, more = await list_files(conn, caller.owner, purpose, after, limit, order)
    return json_response(
        FileList(
            data=files,
            first_id=files[0].id if files else None,
            last_id=files[-1].id if files else None,
            has_more=more,
        )
    )


@router.get("/files/{file_id}", response_model=FileObject, responses=ERRORS, summary="Retrieve a file")
async def retrieve_file(request: Request, caller: Authorized, file_id: str) -> Response:
    """One file's object."""
    async with api_state(request).reads.connect() as conn:
        return json_response(file_object(await get_file(conn, caller.owner, file_id)))


@router.delete("/files/{file_id}", response_model=FileDeleted, responses=ERRORS, summary="Delete a file")
async def delete_file(request: Request, caller: Authorized, file_id: str) -> Response:
    """Delete a file and its bytes; batches made from it keep their requests and results."""
    async with api_state(request).engine.begin() as conn:
        deleted = (
            await conn.execute(
                text("DELETE FROM api_file WHERE id = :id AND owner = :owner RETURNING id"),
                {"id": file_id, "owner": caller.owner},
            )
        ).one_or_none()
    if deleted is None:
        raise file_not_found(file_id)
    return json_response(FileDeleted(id=file_id, deleted=True))


@router.get(
    "/files/{file_id}/content",
    responses={**ERRORS, 200: {"content": {"application/octet-stream": {}}, "description": "The bytes."}},
    summary="Retrieve file content",
)
async def file_content(request: Request, caller: Authorized, file_id: str) -> Response:
    """The file's bytes, streamed: an upload as stored, a batch's output or error file made from its rows."""
    state = api_state(request)
    async with state.reads.connect() as conn:
        row = await get_file(conn, caller.owner, file_id)
        status = None
        if row.batch_id is not None:
            status = (
                await conn.execute(text("SELECT status FROM batch WHERE id = :id"), {"id": row.batch_id})
            ).scalar_one()
    headers = {"Content-Disposition": f'attachment; filename="{_ascii(row.filename)}"'}
    pieces: AsyncGenerator[bytes]
    if row.batch_id is None:
        headers["Content-Length"] = str(row.bytes)
        pieces = file_blocks(state.engine, row.id)
    else:
        pieces = stream_file(state.engine, row.batch_id, row.kind, unfinished_for(status or ""))
    return StreamingResponse(_closing(pieces), media_type="application/octet-stream", headers=headers)


async def _closing(pieces: AsyncGenerator[bytes]) -> AsyncIterator[bytes]:
    """The pieces, with the database cursor behind them closed even when the client leaves halfway."""
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            yield piece


def _ascii(name: str) -> str:
    """A file name safe inside a quoted header value."""
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)[:200]
