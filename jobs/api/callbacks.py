"""Completion callbacks: the final batch object POSTed once to an allowed URL, signed, retried with backoff.

Each batch has at most one callback row. An API instance claims a due callback in Postgres (FOR UPDATE SKIP
LOCKED, then a claim that expires), so several instances never send the same one at once; the claim's
attempt number fences a sender that outlived its claim. A receiver can still see a callback twice if an
instance dies between the receiver's answer and recording it: `webhook-id` is the same on every attempt, so
it can tell.

Signatures follow Standard Webhooks, as OpenAI's own webhooks do, so `openai`'s
`client.webhooks.verify_signature(body, headers, secret=...)` checks them with the owner's callback secret.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.constants import CALLBACK_ATTEMPTS, CALLBACK_RETRY_MAX_SECONDS, CALLBACK_SECRET_PREFIX
from jobs.core.errors import BadInput
from jobs.core.logs import get_logger
from jobs.core.settings import Settings

__all__ = ["callback_allowed", "check_callback_url", "deliver_due", "retry_delay", "sign"]

# An instance sending a callback holds it this long; one that died mid-send loses it to another after that.
CALLBACK_CLAIM_SECONDS = 60.0

log = get_logger(__name__)

# Callbacks sent at once by one instance in one round.
_PARALLEL = 8
# The start of a receiver's answer kept as the reason it refused.
_REASON_CHARS = 300


def _pattern(pattern: str) -> tuple[str, str]:
    """A host pattern and the port it requires ('' for any): `host`, `host:port`, `[v6]`, `[v6]:port`."""
    pattern = pattern.lower()
    if pattern.startswith("["):
        host, _, rest = pattern[1:].partition("]")
        return host, rest.removeprefix(":")
    host, sep, port = pattern.rpartition(":")
    return (host, port) if sep and port.isdigit() else (pattern, "")


def callback_allowed(url: str, allow: str) -> bool:
    """Whether ORBATCH_CALLBACK_ALLOW's host patterns (`host`, `*.host`, `host:port`) let the URL be called."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # not a URL: an IPv6 host never closed, a port that is not a number
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        return False
    for want_host, want_port in map(_pattern, allow.replace(",", " ").split()):
        if fnmatch.fnmatchcase(host, want_host) and (not want_port or want_port == str(port)):
            return True
    return False


def check_callback_url(url: str, settings: Settings) -> str:
    """The URL when ORBATCH_CALLBACK_ALLOW lets it be called; BadInput saying why not otherwise."""
    if len(url) > 2048:
        raise BadInput(
            "callback_url is longer than 2048 characters", param="callback_url", code="invalid_value"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # `http://[::1` and its like: urlsplit refuses what is not a URL
        host = None
    if host is None or parts.scheme not in ("http", "https"):
        raise BadInput("callback_url must be an http(s) URL", param="callback_url", code="invalid_value")
    if not settings.callback_allow.strip():
        raise BadInput(
            "this server sends no callbacks: its operator allows callback hosts with ORBATCH_CALLBACK_ALLOW",
            param="callback_url",
            code="callback_not_allowed",
        )
    if not callback_allowed(url, settings.callback_allow):
        raise BadInput(
            f"callback_url's host {host[:100]!r} is not one this server may call "
            "(ORBATCH_CALLBACK_ALLOW lists those)",
            param="callback_url",
            code="callback_not_allowed",
        )
    return url


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix(CALLBACK_SECRET_PREFIX))
    mac = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def retry_delay(attempts: int, base: float) -> float:
    """Seconds before the next try after `attempts` tries: doubling from `base`, capped."""
    return float(min(CALLBACK_RETRY_MAX_SECONDS, base * 2 ** max(0, attempts - 1)))


@dataclass(slots=True, frozen=True)
class _Claimed:
    batch_id: str
    url: str
    payload: str
    attempts: int
    secret: str | None


_CLAIM = text(
    """
    WITH due AS (
        SELECT batch_id FROM api_callback
        WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_at <= now()
          AND (claimed_until IS NULL OR claimed_until < now())
        ORDER BY next_at LIMIT :limit FOR UPDATE SKIP LOCKED
    )
    UPDATE api_callback c SET claimed_until = now() + make_interval(secs => :claim), attempts = c.attempts + 1
    FROM due WHERE c.batch_id = due.batch_id
    RETURNING c.batch_id, c.url, c.payload, c.attempts,
              (SELECT k.callback_secret FROM api_batch a JOIN api_key k ON k.name = a.owner
               WHERE a.batch_id = c.batch_id) AS secret
    """
)

# Only the holder of this attempt's claim records its outcome.
_DELIVERED = text(
    "UPDATE api_callback SET delivered_at = now(), claimed_until = NULL, last_error = NULL"
    " WHERE batch_id = :batch_id AND attempts = :attempts AND delivered_at IS NULL"
)
_FAILED = text(
    """
    UPDATE api_callback SET claimed_until = NULL, last_error = :error,
           next_at = now() + make_interval(secs => :delay),
           given_up_at = CASE WHEN attempts >= :max_attempts THEN now() END
    WHERE batch_id = :batch_id AND attempts = :attempts AND delivered_at IS NULL
    """
)


async def _send(client: httpx.AsyncClient, callback: _Claimed, settings: Settings) -> str | None:
    """POST the callback once; None when the receiver took it, else why not."""
    if callback.secret is None:
        return "the batch's owner has no callback secret (`orbatch keys create NAME` makes one)"
    if not callback_allowed(callback.url, settings.callback_allow):
        return "the URL is no longer allowed by ORBATCH_CALLBACK_ALLOW"
    message_id = f"msg_{callback.batch_id}"
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "orbatch-callback",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(callback.secret, message_id, timestamp, callback.payload),
    }
    try:
        # Redirects are not followed: a redirect could lead to a host the allow list does not name.
        response = await client.post(callback.url, content=callback.payload.encode(), headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:_REASON_CHARS]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:_REASON_CHARS]}"


async def _deliver(
    engine: AsyncEngine, client: httpx.AsyncClient, callback: _Claimed, settings: Settings
) -> None:
    reason = await _send(client, callback, settings)
    async with engine.begin() as conn:
        if reason is None:
            await conn.execute(_DELIVERED, {"batch_id": callback.batch_id, "attempts": callback.attempts})
            log.info("callback delivered", batch=callback.batch_id, attempts=callback.attempts)
            return
        await conn.execute(
            _FAILED,
            {
                "batch_id": callback.batch_id,
                "attempts": callback.attempts,
                "error": reason,
                "delay": retry_delay(callback.attempts, settings.callback_retry_base_seconds),
                "max_attempts": CALLBACK_ATTEMPTS,
            },
        )
    log.warning("callback not delivered", batch=callback.batch_id, attempts=callback.attempts, reason=reason)


async def deliver_due(engine: AsyncEngine, client: httpx.AsyncClient, settings: Settings) -> int:
    """Send the callbacks that are due (a few at once); returns how many were tried."""
    async with engine.begin() as conn:
        rows = (await conn.execute(_CLAIM, {"limit": _PARALLEL, "claim": CALLBACK_CLAIM_SECONDS})).all()
    claimed = [_Claimed(r.batch_id, r.url, r.payload, r.attempts, r.secret) for r in rows]
    await asyncio.gather(*(_deliver(engine, client, c, settings) for c in claimed))
    return len(claimed)
