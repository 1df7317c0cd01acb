"""Who a request acts as: its Bearer key's owner (or `local` without auth), within that owner's request rate."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import Depends, Request
from redis.exceptions import RedisError

from jobs.api.keys import Caller, digest, find_caller
from jobs.api.state import ApiState, api_state
from jobs.core.constants import API_KEY_PREFIX, API_RATE_KEY, NO_AUTH_OWNER
from jobs.core.errors import Forbidden, RateLimited, Unauthorized
from jobs.core.logs import get_logger
from jobs.core.settings import is_loopback

__all__ = ["Authorized", "authorized", "loopback_host_only"]

log = get_logger(__name__)

# Keys remembered at once by one instance; past this the memory is emptied and refills as keys come back.
_KNOWN_KEYS_MAX = 10_000

# A token bucket per owner, on Redis's clock so every API instance shares it: `limit` requests of burst,
# refilled at `limit` a minute. Answers 0 when a request may go, else the seconds until one may.
_RATE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local per_second = limit / 60
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or limit
local at = tonumber(held[2]) or now
tokens = math.min(limit, tokens + math.max(0, now - at) * per_second)
if tokens < 1 then
  return tostring((1 - tokens) / per_second)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 120)
return '0'
"""


def _masked(key: str) -> str:
    """Enough of a wrong key to recognise it, not enough to matter."""
    return f"{key[:8]}***{key[-4:]}" if len(key) > 16 else "***"


async def _take_token(state: ApiState, caller: Caller) -> None:
    limit = caller.rate_per_minute or state.settings.api_rate_per_minute
    if limit is None:
        return
    key = API_RATE_KEY.format(queue=state.settings.queue_name, owner=caller.owner)
    try:
        wait = float(await state.redis.eval(_RATE_LUA, 1, key, str(limit)))  # type: ignore[misc]
    except RedisError as exc:
        # The limit shields the service from one busy client; Redis being down must not shut out everyone.
        log.warning("rate limit not checked: Redis unreachable", error=str(exc))
        return
    if wait > 0:
        raise RateLimited(
            f"Rate limit reached for {caller.owner!r}: {limit} requests per minute. Please try again in "
            f"{wait:.1f}s.",
            retry_after=wait,
        )


async def _lookup(state: ApiState, key: str) -> Caller | None:
    """The key's caller: from what this instance saw within ORBATCH_API_KEY_CACHE_SECONDS; up to twice that
    old while one background lookup refreshes it (so a burst of requests never waits on Postgres for its key);
    else looked up in Postgres."""
    ttl = state.settings.api_key_cache_seconds
    key_digest = digest(key)
    seen = state.known_keys.get(key_digest)
    age = None if seen is None else time.monotonic() - seen[0]
    if seen is not None and age is not None and age < 2 * ttl:
        if age >= ttl and key_digest not in _REFRESHING:
            task = asyncio.create_task(_look_up(state, key, key_digest))
            _REFRESHING[key_digest] = task
            task.add_done_callback(lambda done: _refreshed(key_digest, done))
        return seen[1]
    return await _look_up(state, key, key_digest)


# Background lookups of keys whose memory is getting old, one per key.
_REFRESHING: dict[str, asyncio.Task[Caller | None]] = {}


def _refreshed(key_digest: str, task: asyncio.Task[Caller | None]) -> None:
    _REFRESHING.pop(key_digest, None)
    if not task.cancelled():
        # A lookup that failed (Postgres away) is met again by the next request.
        task.exception()


async def _look_up(state: ApiState, key: str, key_digest: str) -> Caller | None:
    async with state.reads.connect() as conn:
        found = await find_caller(conn, key)
    if found is None:
        state.known_keys.pop(key_digest, None)
    elif state.settings.api_key_cache_seconds > 0:
        if len(state.known_keys) >= _KNOWN_KEYS_MAX:
            state.known_keys.clear()
        state.known_keys[key_digest] = (time.monotonic(), found)
    return found


def _host_name(host: str) -> str:
    """The name in a Host header, without its port (an IPv6 address keeps no brackets)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def loopback_host_only(request: Request) -> None:
    """Forbidden on a `--no-auth` server for a request naming any host but loopback: a page of another site whose
    name was rebound to 127.0.0.1 would otherwise act as the owner, its requests same-origin to the browser."""
    if not api_state(request).no_auth:
        return
    host = request.headers.get("host", "")
    if not is_loopback(_host_name(host.strip().lower())):
        raise Forbidden(
            f"this orbatch server runs without keys and answers only to a loopback name (127.0.0.1, [::1], "
            f"localhost), not {host[:100]!r}",
            code="host_not_allowed",
        )


async def authorized(request: Request) -> Caller:
    """The caller of this request; Unauthorized (401) without a live key, RateLimited (429) over its rate."""
    state = api_state(request)
    if state.no_auth:
        caller = Caller(NO_AUTH_OWNER, None)
    else:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). An orbatch operator makes keys "
                "with `orbatch keys create NAME`.",
            )
        found = await _lookup(state, key) if key.startswith(API_KEY_PREFIX) else None
        if found is None:
            raise Unauthorized(
                f"Incorrect API key provided: {_masked(key)}. Keys are made, listed and revoked with "
                "`orbatch keys`.",
                code="invalid_api_key",
            )
        caller = found
    await _take_token(state, caller)
    return caller


Authorized = Annotated[Caller, Depends(authorized)]
