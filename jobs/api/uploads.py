"""`POST /v1/files`: a multipart upload parsed as it streams in and stored as it arrives, all or nothing.

The body is never held whole, in memory or on a local disk: each piece of the file part goes to Postgres
(`storage.FileWriter`) inside one transaction, committed only once the closing boundary was read and every
field checked. A body that is too large, stalls, is cut off, or is not what the endpoint takes ends with a
clear error and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import text
from starlette.requests import ClientDisconnect

from jobs.api.inputs import checked_text
from jobs.api.middleware import UPLOAD_FRAMING_BYTES
from jobs.api.state import ApiState
from jobs.api.storage import FileWriter, new_file_id
from jobs.core.errors import BadInput, RequestTimeout, TooLarge, UnsupportedMediaType

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["FILE_PURPOSES", "receive_upload"]

# A form field other than the file (`purpose`, `expires_after[seconds]`) is a word or a number.
FORM_FIELD_MAX_BYTES = 1024

# OpenAI's purposes; orbatch stores files for batches only, and says so for the others.
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_FIELDS = ("file", "purpose", "expires_after[anchor]", "expires_after[seconds]")
# A form with more parts than this is not an upload of one file.
_MAX_PARTS = 16
_MAX_FILENAME_CHARS = 512


@dataclass(slots=True)
class _Part:
    name: str = ""
    # As the client sent it: checked as text (inputs.checked_text) once the upload is whole.
    filename: bytes | None = None
    value: bytearray = field(default_factory=bytearray)


class _Form:
    """Collects what the synchronous parser callbacks see; the file part's bytes are drained after each write."""

    def __init__(self) -> None:
        self.parts: list[_Part] = []
        self.file_pieces: list[bytes] = []
        self.in_file = False
        self.ended = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self.problem: BadInput | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self.parts.append(_Part())
        if len(self.parts) > _MAX_PARTS and self.problem is None:
            self.problem = BadInput(f"the form has more than {_MAX_PARTS} parts; send `file` and `purpose`")

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field.extend(data[start:end])

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value.extend(data[start:end])

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").strip().lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        part = self.parts[-1]
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        part.filename = options.get(b"filename")
        if part.name not in _FIELDS and self.problem is None:
            self.problem = BadInput(
                f"Unrecognized request argument supplied: {part.name[:64]}",
                param=part.name[:64],
                code="unknown_parameter",
            )
        if part.name == "file":
            if any(p.name == "file" for p in self.parts[:-1]) and self.problem is None:
                self.problem = BadInput("send one `file` per upload", param="file")
            self.in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.file_pieces.append(data[start:end])
            return
        value = self.parts[-1].value
        value.extend(data[start:end])
        if len(value) > FORM_FIELD_MAX_BYTES and self.problem is None:
            self.problem = BadInput(
                f"the form field {self.parts[-1].name[:64]!r} is longer than {FORM_FIELD_MAX_BYTES} bytes",
                param=self.parts[-1].name[:64],
            )

    def _part_end(self) -> None:
        self.in_file = False

    def _end(self) -> None:
        self.ended = True

    def value(self, name: str) -> str | None:
        """The field's text; BadInput naming it when it is not text orbatch takes (inputs.py)."""
        for part in self.parts:
            if part.name == name:
                return checked_text(bytes(part.value), name).strip()
        return None


def _boundary(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        shown = content_type.split(";", 1)[0].strip()[:100] or "none"
        raise UnsupportedMediaType(
            f"Invalid Content-Type header ({shown}), expected multipart/form-data.",
            code="unsupported_media_type",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadInput("the multipart/form-data Content-Type has no boundary", code="invalid_request")
    return boundary


def _expires_at(form: _Form, now: datetime) -> datetime | None:
    anchor, seconds = form.value("expires_after[anchor]"), form.value("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise BadInput(
            "expires_after[anchor] must be 'created_at'", param="expires_after.anchor", code="invalid_value"
        )
    if seconds is None or not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000:
        raise BadInput(
            "expires_after[seconds] must be a whole number of seconds from 3600 (1 hour) to 2592000 (30 days)",
            param="expires_after.seconds",
            code="invalid_value",
        )
    return now + timedelta(seconds=int(seconds))


class _Body:
    """The request body as it arrives, with what was read; RequestTimeout when it stalls for `idle` seconds."""

    def __init__(self, request: Request, idle: float) -> None:
        self._stream = request.stream()
        self._idle = idle
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(self._stream), self._idle)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise RequestTimeout(
                    f"the upload sent nothing for {self._idle:g} seconds and was dropped; nothing was stored",
                    code="upload_stalled",
                ) from None
            self.received += len(chunk)
            if chunk:
                yield chunk


async def receive_upload(request: Request, state: ApiState, owner: str) -> str:
    """Store the upload for `owner` and return the new file's id; nothing is stored when it fails."""
    body = _Body(request, state.settings.upload_idle_seconds)
    try:
        return await _store(request, body, state, owner)
    except ClientDisconnect:
        raise BadInput(
            "the client went away during the upload; nothing was stored", code="upload_aborted"
        ) from None


def _too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"the file is larger than the {limit} byte limit for an upload (ORBATCH_MAX_UPLOAD_BYTES); "
        "nothing was stored",
        param="file",
        code="file_too_large",
    )


async def _store(request: Request, body: _Body, state: ApiState, owner: str) -> str:
    boundary = _boundary(request)
    limit = state.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + UPLOAD_FRAMING_BYTES:
        raise _too_large(limit)
    form = _Form()
    try:
        parser = MultipartParser(boundary, form.callbacks())
    except ValueError as exc:
        raise BadInput(f"the multipart boundary cannot be used: {exc}") from None
    file_id = new_file_id()
    async with state.engine.begin() as conn:
        # The row first (its pieces refer to it); it gets its name, purpose and size at the end, and all of
        # it is seen by others only once committed.
        now = (
            await conn.execute(
                text(
                    "INSERT INTO api_file (id, owner, filename, purpose, bytes)"
                    " VALUES (:id, :owner, '', '', 0) RETURNING created_at"
                ),
                {"id": file_id, "owner": owner},
            )
        ).scalar_one()
        writer = await FileWriter.open(conn, file_id)
        try:
            async for chunk in body.chunks():
                if body.received > limit + UPLOAD_FRAMING_BYTES:
                    raise _too_large(limit)
                try:
                    parser.write(chunk)
                except MultipartParseError as exc:
                    raise BadInput(
                        f"the multipart body is malformed ({exc}); nothing was stored",
                        code="invalid_multipart",
                    ) from None
                if form.problem is not None:
                    raise form.problem
                if form.file_pieces:
                    pieces, form.file_pieces = form.file_pieces, []
                    await writer.write(b"".join(pieces))
                    if writer.size > limit:
                        raise _too_large(limit)
            if not form.ended:
                raise BadInput(
                    "the upload ended before its closing multipart boundary (was it cut off?); nothing was stored",
                    code="incomplete_upload",
                )
            await writer.close()
        except BaseException:
            await writer.abandon()
            raise
        file_part = next((p for p in form.parts if p.name == "file"), None)
        if file_part is None:
            raise BadInput(
                "Missing required parameter: 'file'.", param="file", code="missing_required_parameter"
            )
        purpose = form.value("purpose")
        if purpose is None:
            raise BadInput(
                "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
            )
        if purpose != "batch":
            known = purpose in FILE_PURPOSES
            raise BadInput(
                f"orbatch keeps files for batches only: purpose must be 'batch', got {purpose[:64]!r}"
                + ("" if known else f" (OpenAI's purposes are {', '.join(FILE_PURPOSES)})"),
                param="purpose",
                code="invalid_value",
            )
        filename = checked_text(file_part.filename or b"file", "file").strip() or "file"
        if len(filename) > _MAX_FILENAME_CHARS:
            raise BadInput(f"the file name is longer than {_MAX_FILENAME_CHARS} characters", param="file")
        await conn.execute(
            text(
                "UPDATE api_file SET filename = :filename, purpose = :purpose, bytes = :bytes, sha256 = :sha256,"
                " expires_at = :expires_at WHERE id = :id"
            ),
            {
                "id": file_id,
                "filename": filename,
                "purpose": purpose,
                "bytes": writer.size,
                "sha256": writer.sha256,
                "expires_at": _expires_at(form, now),
            },
        )
    return file_id
