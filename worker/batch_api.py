"""OpenRouter's Batch API (`{base}/batches`): create, get, list, result pages and cancel, with the key and headers
of the chat client (worker/openrouter.py), each exchange under one deadline, and errors redacted of the key."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import IO, Any

import httpx
import orjson

from jobs.core.logs import redact
from worker.openrouter import upstream_client

__all__ = [
    "TERMINAL_REMOTE_STATUSES",
    "BatchApiClient",
    "BatchApiError",
    "BatchApiUnreachable",
    "BatchBody",
    "BatchListPage",
    "RemoteBatchInfo",
    "ResultsPage",
]

# OpenRouter's statuses after which a remote batch changes no more.
TERMINAL_REMOTE_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# Error messages can be whole HTML pages; a row keeps their start.
ERROR_MESSAGE_MAX_CHARS = 2000
# A create's body is built in memory up to this size, then on disk: a remote batch may hold 200 MB.
SPOOL_MEMORY_BYTES = 16 * 1024 * 1024
# A create's body is sent in pieces of this size.
SEND_CHUNK_BYTES = 1024 * 1024
# An answer larger than this is refused rather than held: a result page of a hundred long answers fits.
MAX_ANSWER_BYTES = 512 * 1024 * 1024


class BatchApiError(Exception):
    """OpenRouter answered with an HTTP error: its status, its error code and message (the key redacted)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = redact(message)[:ERROR_MESSAGE_MAX_CHARS]
        super().__init__(f"HTTP {status} ({code}): {self.message}")


class BatchApiUnreachable(Exception):
    """No answer came (transport failure, deadline passed): whether the request took effect is not known."""

    def __init__(self, what: str) -> None:
        super().__init__(redact(what)[:ERROR_MESSAGE_MAX_CHARS])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(slots=True, frozen=True)
class RemoteBatchInfo:
    """A batch object as OpenRouter shows it (the fields orbatch reads)."""

    id: str
    status: str
    model: str | None = None
    endpoint: str | None = None
    created_at: int | None = None
    expires_at: int | None = None
    provider: str | None = None
    total: int | None = None
    completed: int = 0
    failed: int = 0
    cost: Decimal | None = None
    error: str | None = None
    # Terminal batches carry their lines inline too (never in a list); pages are read from `results` instead.
    results: list[dict[str, Any]] | None = None

    @property
    def terminal(self) -> bool:
        """It will change no more: completed, failed, expired or cancelled."""
        return self.status in TERMINAL_REMOTE_STATUSES

    @classmethod
    def of(cls, data: Any) -> RemoteBatchInfo:
        """From a batch object; ValueError when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ValueError("not a batch object (no `id`)")
        counts: dict[str, Any] = (
            data["request_counts"] if isinstance(data.get("request_counts"), dict) else {}
        )
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        cost: Decimal | None = None
        raw_cost = usage.get("cost")
        if isinstance(raw_cost, int | float) and not isinstance(raw_cost, bool):
            with contextlib.suppress(InvalidOperation):
                cost = Decimal(repr(raw_cost))
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        results = data.get("results")
        return cls(
            id=data["id"],
            status=_str(data.get("status")) or "unknown",
            model=_str(data.get("model")),
            endpoint=_str(data.get("endpoint")),
            created_at=_int(data.get("created_at")),
            expires_at=_int(data.get("expires_at")),
            provider=_str(data.get("provider")),
            total=_int(counts.get("total")),
            completed=_int(counts.get("completed")) or 0,
            failed=_int(counts.get("failed")) or 0,
            cost=cost,
            error=redact(message)[:ERROR_MESSAGE_MAX_CHARS] if isinstance(message, str) else None,
            results=[r for r in results if isinstance(r, dict)] if isinstance(results, list) else None,
        )


@dataclass(slots=True, frozen=True)
class ResultsPage:
    """One page of a finished batch's lines, and the cursor of the next."""

    lines: list[dict[str, Any]]
    has_more: bool
    next_cursor: str | None


@dataclass(slots=True, frozen=True)
class BatchListPage:
    """One page of the key's batches, newest first."""

    batches: list[RemoteBatchInfo]
    has_more: bool
    last_id: str | None


@dataclass(slots=True)
class BatchBody:
    """A create's JSON body, spooled (memory, then disk past SPOOL_MEMORY_BYTES), its keys in the order the
    Batch API reads them as a stream: `endpoint`, `model`, `callback_url` (if any), then `requests`."""

    # Closed by `close()` once the create is answered (the body outlives any one `with`).
    file: IO[bytes] = field(default_factory=lambda: tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES))  # noqa: SIM115
    size: int = 0
    lines: int = 0

    @classmethod
    async def build(
        cls,
        endpoint: str,
        model: str,
        lines: AsyncIterable[Iterable[tuple[str, dict[str, Any]]]],
        callback_url: str | None = None,
    ) -> BatchBody:
        """The body of a create from chunks of (custom_id, body) lines; each body without `model`/`models`, as
        a remote batch has one model for every line and no fallback chain."""
        built = cls()
        # Written by hand, not by one dumps() of a dict: the order is the API's rule, and the lines stream in.
        head = b'{"endpoint":' + orjson.dumps(endpoint) + b',"model":' + orjson.dumps(model)
        if callback_url is not None:
            head += b',"callback_url":' + orjson.dumps(callback_url)
        built._write(head + b',"requests":[')
        async for chunk in lines:
            for custom_id, body in chunk:
                line = {k: v for k, v in body.items() if k not in ("model", "models")}
                built._write(
                    (b"," if built.lines else b"") + orjson.dumps({"custom_id": custom_id, "body": line})
                )
                built.lines += 1
        built._write(b"]}")
        return built

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def content(self) -> bytes:
        """The whole body (for tests and small bodies)."""
        self.file.seek(0)
        return self.file.read()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces, from its start."""
        self.file.seek(0)
        while piece := self.file.read(SEND_CHUNK_BYTES):
            yield piece

    def close(self) -> None:
        """Drop the spooled body."""
        self.file.close()


def _error(response_status: int, raw: bytes) -> BatchApiError:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code = error.get("code") if error.get("code") is not None else error.get("type")
        message = error.get("message")
        return BatchApiError(
            response_status,
            str(code) if code is not None else f"http_{response_status}",
            message if isinstance(message, str) else f"HTTP {response_status}",
        )
    text = raw[:ERROR_MESSAGE_MAX_CHARS].decode("utf-8", "replace")
    return BatchApiError(response_status, f"http_{response_status}", text or f"HTTP {response_status}")


class BatchApiClient:
    """A pooled client for `{base}/batches`; built once per worker process, beside the chat client."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        connect_timeout: float,
        app_url: str,
        app_title: str,
        max_connections: int = 4,
    ) -> None:
        # One deadline per exchange, connect to last byte (httpx's own timeouts are per read).
        self.deadline = timeout
        self._client = upstream_client(
            base_url,
            api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            app_url=app_url,
            app_title=app_title,
        )

    async def _exchange(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, body: BatchBody | None = None
    ) -> Any:
        """One request under the deadline; the decoded JSON of a 2xx answer, BatchApiError for an HTTP error,
        BatchApiUnreachable when no answer came."""
        headers = {"Content-Length": str(body.size)} if body is not None else None
        try:
            async with asyncio.timeout(self.deadline):
                async with self._client.stream(
                    method,
                    path,
                    params=params,
                    content=body.chunks() if body is not None else None,
                    headers=headers,
                ) as response:
                    raw = bytearray()
                    async for piece in response.aiter_bytes():
                        raw += piece
                        if len(raw) > MAX_ANSWER_BYTES:
                            raise BatchApiError(response.status_code, "answer_too_large", f"{method} {path}")
                    status = response.status_code
        except TimeoutError:
            raise BatchApiUnreachable(
                f"{method} {path}: no complete answer within {self.deadline:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise BatchApiUnreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if status >= 400:
            raise _error(status, bytes(raw))
        try:
            return orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            # A 2xx with a body that is no JSON: a proxy's page, not OpenRouter's answer.
            raise BatchApiUnreachable(
                f"{method} {path}: HTTP {status} with a body that is not JSON"
            ) from None

    async def create(self, body: BatchBody) -> RemoteBatchInfo:
        """POST /batches (202: stored, validated after); the batch as created."""
        return RemoteBatchInfo.of(await self._exchange("POST", "batches", body=body))

    async def get(self, remote_id: str) -> RemoteBatchInfo:
        """GET /batches/{id}."""
        return RemoteBatchInfo.of(await self._exchange("GET", f"batches/{remote_id}"))

    async def list(self, *, after: str | None = None, limit: int = 100) -> BatchListPage:
        """GET /batches: a page of the key's batches, newest first, after the batch `after`."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        data = await self._exchange("GET", "batches", params=params)
        items = data.get("data") if isinstance(data, dict) else None
        batches = []
        for item in items if isinstance(items, list) else []:
            with contextlib.suppress(ValueError):
                batches.append(RemoteBatchInfo.of(item))
        has_more = bool(data.get("has_more")) if isinstance(data, dict) else False
        last_id = data.get("last_id") if isinstance(data, dict) else None
        return BatchListPage(batches, has_more, last_id if isinstance(last_id, str) else None)

    async def results(self, remote_id: str, cursor: str | None, limit: int) -> ResultsPage:
        """GET /batches/{id}/results: a page of a finished batch's lines, from `cursor` (None: the first)."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        data = await self._exchange("GET", f"batches/{remote_id}/results", params=params)
        items = data.get("data") if isinstance(data, dict) else None
        lines = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        has_more = bool(data.get("has_more")) if isinstance(data, dict) else False
        following = data.get("next_cursor") if isinstance(data, dict) else None
        return ResultsPage(lines, has_more, following if isinstance(following, str) else None)

    async def cancel(self, remote_id: str) -> RemoteBatchInfo:
        """POST /batches/{id}/cancel (403 where cancelling is not enabled, 409 once it is over)."""
        return RemoteBatchInfo.of(await self._exchange("POST", f"batches/{remote_id}/cancel"))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
