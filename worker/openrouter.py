"""The OpenRouter HTTP client: one shared httpx pool, one call (chat or embeddings) under one deadline, the raw
answer back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from jobs.core.constants import SIMULATOR_HEADER
from jobs.formats.input_lines import EMBEDDINGS_URL, endpoint_of

__all__ = [
    "CallDeadline",
    "CallResult",
    "OpenRouterClient",
    "chat_payload",
    "embeddings_payload",
    "upstream_client",
]

# Of an answer over the size limit, the start (its id, model, provider) and the end (its usage, which
# OpenRouter writes last) are kept, so the call's cost is still recorded.
_HEAD_BYTES = 64 * 1024
_TAIL_BYTES = 1024 * 1024


class CallDeadline(Exception):
    """The call ran past its deadline (connect to last byte), however many bytes trickled in meanwhile."""


@dataclass(slots=True)
class CallResult:
    """What came back from one call: an HTTP answer, or the transport error that stopped it."""

    latency_ms: int
    status: int | None = None
    headers: httpx.Headers | None = None
    raw: bytes = b""
    transport_error: Exception | None = None
    # The body was larger than the limit: `raw` holds its start and `tail` its end; the rest was not kept.
    too_large: int | None = None
    tail: bytes = b""


def chat_payload(body: dict[str, Any], models: list[str]) -> bytes:
    """The request body: the user's parameters plus the model window (`model` for one, `models` for more)."""
    payload = dict(body)
    if len(models) == 1:
        payload["model"] = models[0]
    else:
        payload["models"] = models
    return orjson.dumps(payload)


def embeddings_payload(body: dict[str, Any], models: list[str]) -> bytes:
    """An embeddings request body: the user's parameters and one `model` (the API takes no `models` chain)."""
    return orjson.dumps({**body, "model": models[0]})


def upstream_client(
    base_url: str,
    api_key: str,
    *,
    timeout: float,
    connect_timeout: float,
    max_connections: int,
    app_url: str,
    app_title: str,
) -> httpx.AsyncClient:
    """An httpx pool for OpenRouter's API at `base_url`: the key as a bearer token, the attribution headers.

    Every client of the worker is built here (chat calls, the Batch API), so the key travels one way only.
    """
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/",
        headers={
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "HTTP-Referer": app_url,
            "X-Title": app_title,
        },
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )


class OpenRouterClient:
    """A pooled client for the chat completions and embeddings endpoints; built once per worker process."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        app_url: str,
        app_title: str,
        max_response_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        # httpx's timeouts are per operation: a read that gets one byte every few seconds never times out.
        # `deadline` bounds the whole call; httpx's own read timeout only catches a silent connection sooner.
        self.deadline = timeout
        self.max_response_bytes = max_response_bytes
        self._client = upstream_client(
            base_url,
            api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            app_url=app_url,
            app_title=app_title,
        )

    async def chat(self, body: dict[str, Any], models: list[str]) -> CallResult:
        """POST /chat/completions under one deadline; never raises for HTTP or transport failures."""
        return await self._call("chat/completions", chat_payload(body, models))

    async def send(self, body: dict[str, Any], models: list[str]) -> CallResult:
        """The call a stored body is for: /embeddings for an embeddings request, else /chat/completions."""
        if endpoint_of(body) == EMBEDDINGS_URL:
            return await self._call("embeddings", embeddings_payload(body, models))
        return await self.chat(body, models)

    async def _call(self, path: str, payload: bytes) -> CallResult:
        started = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1000)

        try:
            async with asyncio.timeout(self.deadline):
                return await self._post(path, payload, elapsed)
        except TimeoutError:
            return CallResult(
                latency_ms=elapsed(),
                transport_error=CallDeadline(f"no complete answer within {self.deadline:g} s"),
            )
        except httpx.TransportError as exc:
            return CallResult(latency_ms=elapsed(), transport_error=exc)

    async def _post(self, path: str, payload: bytes, elapsed: Any) -> CallResult:
        async with self._client.stream("POST", path, content=payload) as response:
            head = bytearray()
            tail = bytearray()
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size <= self.max_response_bytes:
                    head += chunk
                    continue
                if len(head) > _HEAD_BYTES:
                    # Past the limit: keep the start and a sliding end, let the middle go.
                    tail += head[_HEAD_BYTES:]
                    del head[_HEAD_BYTES:]
                tail += chunk
                if len(tail) > _TAIL_BYTES:
                    del tail[: len(tail) - _TAIL_BYTES]
            return CallResult(
                latency_ms=elapsed(),
                status=response.status_code,
                headers=response.headers,
                raw=bytes(head),
                too_large=size if size > self.max_response_bytes else None,
                tail=bytes(tail),
            )

    async def get_json(self, path: str) -> Any:
        """GET an informational endpoint (`models`, `key`) and decode it."""
        response = await self._client.get(path)
        response.raise_for_status()
        return orjson.loads(response.content)

    async def simulator_instance(self) -> str | None:
        """The instance of orbatch's simulator this client calls (its answers name it, errors too); None when
        the upstream is not a simulator or does not answer."""
        try:
            response = await self._client.get("key")
        except httpx.HTTPError:
            return None
        instance: str | None = response.headers.get(SIMULATOR_HEADER)
        return instance

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
