"""The global throttle: one limiter in Redis for every worker, each decision one Lua script on Redis's clock.

Free-model requests are paced by GCRA with burst 1 and a spacing margin (OpenRouter's window shape is unknown:
no more than L in any interval), counted per UTC day, and held back by a cool-down that only moves forward.
Every request, free or paid, holds one of a fleet-wide number of in-flight permits.
A denial consumes nothing. A short wait is a reserved slot the caller sleeps for; a longer one is returned to
the caller, which parks the request in Postgres instead of holding a worker slot.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

__all__ = ["Denied", "Permit", "Throttle", "ThrottleLimits"]

# KEYS: tat, day, inflight, cooldown. ARGV: permit, free, interval_ms, day_limit, cap, permit_ttl_ms, max_wait_ms.
# Returns {granted (0) or denied (1), wait_ms, kind}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local free = ARGV[2] == '1'
local interval, day_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local cap, ttl, max_wait = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cool = tonumber(redis.call('GET', KEYS[4]) or '0')
if cool > now then return {1, cool - now, 'cooldown'} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= cap then return {1, 0, 'in_flight'} end
local wait = 0
if free then
  local today = math.floor(now / 86400000)
  local count = 0
  local stored = redis.call('GET', KEYS[2])
  -- No count at all: Redis lost it (or this is the first free request ever); the caller rebuilds it.
  if not stored then return {1, 0, 'unseeded'} end
  local day, n = string.match(stored, '^(%d+):(%d+)$')
  if tonumber(day) == today then count = tonumber(n) end
  if count >= day_limit then return {1, (today + 1) * 86400000 - now, 'daily'} end
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local slot = math.max(tat, now)
  wait = slot - now
  if wait > max_wait then return {1, wait, 'rate'} end
  redis.call('SET', KEYS[1], slot + interval, 'PX', wait + interval + 60000)
  redis.call('SET', KEYS[2], today .. ':' .. (count + 1), 'PX', 172800000)
end
redis.call('ZADD', KEYS[3], now + wait + ttl, ARGV[1])
return {0, wait, 'ok'}
"""

# KEYS: cooldown. Returns the cool-down left in ms (0: fire now).
_CONFIRM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cool = tonumber(redis.call('GET', KEYS[1]) or '0')
if cool > now then return cool - now end
return 0
"""

# KEYS: inflight, day. ARGV: permit, refund (1: the free request was never sent).
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  local t = redis.call('TIME')
  local today = math.floor(tonumber(t[1]) / 86400)
  local stored = redis.call('GET', KEYS[2])
  if stored then
    local day, n = string.match(stored, '^(%d+):(%d+)$')
    if tonumber(day) == today and tonumber(n) > 0 then
      redis.call('SET', KEYS[2], day .. ':' .. (tonumber(n) - 1), 'KEEPTTL')
    end
  end
end
return 1
"""

# KEYS: cooldown, tat. ARGV: until_ms, free. The cool-down only moves forward, and no free slot is reserved
# inside it.
_COOL_DOWN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cool = tonumber(redis.call('GET', KEYS[1]) or '0')
local untill = math.max(tonumber(ARGV[1]), cool)
if untill <= now then return 0 end
if untill > cool then redis.call('SET', KEYS[1], untill, 'PX', untill - now + 1000) end
if ARGV[2] == '1' then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if untill > tat then redis.call('SET', KEYS[2], untill, 'PX', untill - now + 60000) end
end
return untill - now
"""

# KEYS: day. ARGV: count, only_if_missing. Sets today's count of free requests.
_SET_DAY = """
local t = redis.call('TIME')
local today = math.floor(tonumber(t[1]) / 86400)
if ARGV[2] == '1' then
  return redis.call('SET', KEYS[1], today .. ':' .. ARGV[1], 'PX', 172800000, 'NX') and 1 or 0
end
redis.call('SET', KEYS[1], today .. ':' .. ARGV[1], 'PX', 172800000)
return 1
"""


@dataclass(slots=True, frozen=True)
class ThrottleLimits:
    """The limits the throttle enforces."""

    free_per_window: int
    window_seconds: float
    margin: float
    free_per_day: int
    max_in_flight: int
    max_wait_seconds: float
    permit_ttl_seconds: float

    @property
    def interval_ms(self) -> int:
        """GCRA spacing between two free requests, margin included."""
        return max(1, round(self.window_seconds * 1000 / self.free_per_window * (1 + self.margin)))


@dataclass(slots=True, frozen=True)
class Permit:
    """Leave to send one request now; hand it back with `release`."""

    id: str
    free: bool


@dataclass(slots=True, frozen=True)
class Denied:
    """No slot within the longest wait a worker holds: why, and how long until one may be free."""

    kind: str  # 'daily', 'rate' or 'cooldown'
    wait_seconds: float


class Throttle:
    """The fleet-wide limiter; one per worker process, all sharing the same Redis keys."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        limits: ThrottleLimits,
        count_today: Callable[[], Awaitable[int]],
    ) -> None:
        self.redis = redis
        self.limits = limits
        # Free calls already made today, from Postgres: rebuilds the daily count when Redis has none.
        self.count_today = count_today
        prefix = f"{namespace}:throttle"
        self.keys = {
            "tat": f"{prefix}:free-tat",
            "day": f"{prefix}:free-day",
            "inflight": f"{prefix}:in-flight",
            "cool_free": f"{prefix}:cooldown:free",
            "cool_paid": f"{prefix}:cooldown:paid",
        }
        self._reserve = redis.register_script(_RESERVE)
        self._confirm = redis.register_script(_CONFIRM)
        self._release = redis.register_script(_RELEASE)
        self._cool_down = redis.register_script(_COOL_DOWN)
        self._set_day = redis.register_script(_SET_DAY)

    def _cooldown_key(self, free: bool) -> str:
        return self.keys["cool_free" if free else "cool_paid"]

    async def _try(self, permit_id: str, free: bool) -> tuple[bool, float, str]:
        limits = self.limits
        result: Any = await self._reserve(
            keys=[self.keys["tat"], self.keys["day"], self.keys["inflight"], self._cooldown_key(free)],
            args=[
                permit_id,
                "1" if free else "0",
                limits.interval_ms,
                limits.free_per_day,
                limits.max_in_flight,
                int(limits.permit_ttl_seconds * 1000),
                int(limits.max_wait_seconds * 1000),
            ],
        )
        kind = result[2].decode() if isinstance(result[2], bytes) else str(result[2])
        return int(result[0]) == 0, int(result[1]) / 1000, kind

    async def acquire(self, free: bool) -> Permit | Denied:
        """A permit to send now (after sleeping for a reserved slot), or the long wait that denies one."""
        in_flight_wait = 0.02
        while True:
            permit_id = uuid.uuid4().hex
            granted, wait, kind = await self._try(permit_id, free)
            if granted:
                if wait > 0:
                    try:
                        await asyncio.sleep(wait)
                    except asyncio.CancelledError:
                        await asyncio.shield(self.release(Permit(permit_id, free), sent=False))
                        raise
                # A 429 may have set a cool-down while this slot waited: then the slot is void.
                cool = int(await self._confirm(keys=[self._cooldown_key(free)])) / 1000
                if cool <= 0:
                    return Permit(permit_id, free)
                await self.release(Permit(permit_id, free), sent=False)
                if cool > self.limits.max_wait_seconds:
                    return Denied("cooldown", cool)
                await asyncio.sleep(cool)
                continue
            if kind == "unseeded":
                await self.seed_day(await self.count_today())
                continue
            if kind == "in_flight":
                # Permits free up as calls end; poll with jitter so waiters do not wake together.
                await asyncio.sleep(in_flight_wait * (0.5 + random.random()))
                in_flight_wait = min(in_flight_wait * 2, 1.0)
                continue
            if wait <= self.limits.max_wait_seconds and kind != "daily":
                await asyncio.sleep(wait)
                continue
            return Denied(kind, wait)

    async def renew(self, permit: Permit) -> None:
        """Keep a permit of a call still running; a dead worker's permits lapse after one TTL."""
        await self.redis.zadd(
            self.keys["inflight"], {permit.id: (time.time() + self.limits.permit_ttl_seconds) * 1000}, xx=True
        )

    async def release(self, permit: Permit, sent: bool = True) -> None:
        """Hand a permit back; a free request that was never sent gives its day's count back too."""
        await self._release(
            keys=[self.keys["inflight"], self.keys["day"]],
            args=[permit.id, "1" if permit.free and not sent else "0"],
        )

    async def cool_down(self, free: bool, until_ms: int) -> float:
        """Hold every worker's requests of this kind until `until_ms` (ms since the epoch); seconds left."""
        left = await self._cool_down(
            keys=[self._cooldown_key(free), self.keys["tat"]], args=[until_ms, "1" if free else "0"]
        )
        return int(left) / 1000

    async def seed_day(self, count: int) -> bool:
        """Set today's free count if Redis has none (after it lost its data); True when it was set."""
        return bool(await self._set_day(keys=[self.keys["day"]], args=[count, "1"]))
