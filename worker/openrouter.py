"""The OpenRouter HTTP client: one shared httpx pool, one chat call, the raw answer back."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

__all__ = ["CallResult", "OpenRouterClient", "chat_payload"]


@dataclass(slots=True)
class CallResult:
    """What came back from one call: an HTTP answer, or the transport error that stopped it."""

    latency_ms: int
    status: int | None = None
    headers: httpx.Headers | None = None
    raw: bytes = b""
    transport_error: Exception | None = None


def chat_payload(body: dict[str, Any], models: list[str]) -> bytes:
    """The request body: the user's parameters plus the model window (`model` for one, `models` for more)."""
    payload = dict(body)
    if len(models) == 1:
        payload["model"] = models[0]
    else:
        payload["models"] = models
    return orjson.dumps(payload)


class OpenRouterClient:
    """A pooled client for the chat completions endpoint; built once per worker process."""

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
    ) -> None:
        self._client = httpx.AsyncClient(
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

    async def chat(self, body: dict[str, Any], models: list[str]) -> CallResult:
        """POST /chat/completions; never raises for HTTP or transport failures."""
        started = time.perf_counter()
        try:
            response = await self._client.post("chat/completions", content=chat_payload(body, models))
        except httpx.TransportError as exc:
            return CallResult(latency_ms=int((time.perf_counter() - started) * 1000), transport_error=exc)
        return CallResult(
            latency_ms=int((time.perf_counter() - started) * 1000),
            status=response.status_code,
            headers=response.headers,
            raw=response.content,
        )

    async def get_json(self, path: str) -> Any:
        """GET an informational endpoint (`models`, `key`) and decode it."""
        response = await self._client.get(path)
        response.raise_for_status()
        return orjson.loads(response.content)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
