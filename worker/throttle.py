"""The global throttle: one limiter in Redis for every worker, each decision one Lua script on Redis's clock.

Free-model requests are paced by GCRA with burst 1 and a spacing margin (OpenRouter's window shape is unknown:
no more than L in any interval), counted per free-tier day (a UTC day; scaled only in tests and simulators),
and held back by a cool-down that only moves forward. Every request, free or paid, holds one of a fleet-wide
number of in-flight permits. An outage breaker stops every call while OpenRouter as a whole fails (connections
refused, DNS or TLS failing, a run of 5xx across requests and models) and lets one probe through at a time, at
growing intervals, until one is answered.

A denial consumes nothing. A short wait is a reserved slot the caller sleeps for; a longer one is returned to
the caller, which gives the request back to Postgres instead of holding a worker slot. Every clock reading is
Redis's `TIME`, so workers on machines whose clocks disagree still agree on slots, days and probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from redis.asyncio import Redis

from jobs.core.constants import THROTTLE_KEY
from jobs.scheduling.fleet import BreakerState, breaker_key, read_breaker

__all__ = ["Denied", "DeniedKind", "Permit", "Throttle", "ThrottleLimits", "Verdict"]

# What a call's outcome says about OpenRouter as a whole, for the breaker: `ok` it answered; `none` it answered
# with an error about this request; `fail` a 5xx or a cut connection, one of a possible run; `down` it could not
# be reached at all; `unsent` no call was made; `aborted` the call was given up (the worker stopping).
Verdict = Literal["ok", "none", "fail", "down", "unsent", "aborted"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: tat, day, inflight, cooldown, breaker. ARGV: permit, free, interval_ms, day_limit, cap, permit_ttl_ms,
# max_wait_ms, day_ms, probe_ttl_ms, hold_after_ms (-1: never). Returns {granted (0) or denied (1), wait_ms,
# kind, day}. A free slot further off than hold_after_ms is granted as 'held': its pacing is booked, but it counts
# against the day, and as a call in flight, only when its request comes back for it (`_CLAIM_HELD`), so a slot
# whose batch stopped meanwhile costs none of the day's quota.
_RESERVE = (
    _NOW
    + """
local free = ARGV[2] == '1'
local interval, day_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local cap, ttl, max_wait = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local day_ms, probe_ttl = tonumber(ARGV[8]), tonumber(ARGV[9])
local today = math.floor(now / day_ms)
local probe = false
if redis.call('HEXISTS', KEYS[5], 'since') == 1 then
  local b = redis.call('HMGET', KEYS[5], 'next_probe', 'probe_until')
  local next_probe = tonumber(b[1] or '0')
  if now < next_probe then return {1, next_probe - now, 'outage', today} end
  local probe_until = tonumber(b[2] or '0')
  if probe_until > now then return {1, probe_until - now, 'outage', today} end
  probe = true
end
local cool = tonumber(redis.call('GET', KEYS[4]) or '0')
if cool > now then return {1, cool - now, 'cooldown', today} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= cap then return {1, 0, 'in_flight', today} end
local wait = 0
if free then
  local count = 0
  local stored = redis.call('GET', KEYS[2])
  -- No count at all: Redis lost it (or this is the first free request ever); the caller rebuilds it.
  if not stored then return {1, 0, 'unseeded', today} end
  local day, n = string.match(stored, '^(%d+):(%d+)$')
  if tonumber(day) == today then count = tonumber(n) end
  if count >= day_limit then return {1, (today + 1) * day_ms - now, 'daily', today} end
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local slot = math.max(tat, now)
  wait = slot - now
  if wait > max_wait then return {1, wait, 'rate', today} end
  redis.call('SET', KEYS[1], slot + interval, 'PX', wait + interval + 60000)
  local hold_after = tonumber(ARGV[10])
  if hold_after >= 0 and wait > hold_after and not probe then return {0, wait, 'held', today} end
  redis.call('SET', KEYS[2], today .. ':' .. (count + 1), 'PX', math.max(2 * day_ms, 60000))
end
redis.call('ZADD', KEYS[3], now + wait + ttl, ARGV[1])
if probe then
  redis.call('HSET', KEYS[5], 'probe', ARGV[1], 'probe_until', now + wait + probe_ttl)
  return {0, wait, 'probe', today}
end
return {0, wait, 'ok', today}
"""
)

# KEYS: cooldown, breaker. ARGV: permit. Before a reserved slot fires: the cool-down left in ms, or -1 when the
# breaker opened meanwhile (and this permit is not its probe); 0: fire now.
_CONFIRM = (
    _NOW
    + """
if redis.call('HEXISTS', KEYS[2], 'since') == 1 and redis.call('HGET', KEYS[2], 'probe') ~= ARGV[1] then
  return -1
end
local cool = tonumber(redis.call('GET', KEYS[1]) or '0')
if cool > now then return cool - now end
return 0
"""
)

# KEYS: inflight, day, breaker, streak, streak-requests, streak-models. ARGV: permit, refund (1: a free request
# never sent), booked day, verdict, request id, model, run threshold, probe base ms, probe max ms, reason.
# Returns 'ok', 'closed' (this answer closed the breaker) or 'open' (the breaker is open after this call).
_RELEASE = (
    _NOW
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  local stored = redis.call('GET', KEYS[2])
  if stored then
    local day, n = string.match(stored, '^(%d+):(%d+)$')
    -- A refund goes to the day the slot was booked on; after midnight that day is over.
    if day == ARGV[3] and tonumber(n) > 0 then
      redis.call('SET', KEYS[2], day .. ':' .. (tonumber(n) - 1), 'KEEPTTL')
    end
  end
end
local verdict = ARGV[4]
local opened = redis.call('HEXISTS', KEYS[3], 'since') == 1
local probing = opened and redis.call('HGET', KEYS[3], 'probe') == ARGV[1]
if verdict == 'ok' or (verdict == 'none' and (probing or not opened)) then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  if opened then
    redis.call('DEL', KEYS[3])
    return 'closed'
  end
  return 'ok'
end
if verdict == 'unsent' or verdict == 'aborted' or verdict == 'none' then
  if probing then redis.call('HDEL', KEYS[3], 'probe', 'probe_until') end
  return opened and 'open' or 'ok'
end
local base, cap = tonumber(ARGV[8]), tonumber(ARGV[9])
local function trip()
  if opened then
    local probes = tonumber(redis.call('HGET', KEYS[3], 'probes') or '0')
    if probing then
      probes = probes + 1
      redis.call('HDEL', KEYS[3], 'probe', 'probe_until')
      redis.call('HSET', KEYS[3], 'probes', probes, 'next_probe', now + math.min(base * 2 ^ probes, cap))
    end
    redis.call('HSET', KEYS[3], 'reason', ARGV[10])
  else
    redis.call('HSET', KEYS[3], 'since', now, 'probes', 0, 'next_probe', now + base, 'reason', ARGV[10])
    redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  end
  return 'open'
end
if verdict == 'down' or probing or opened then return trip() end
-- verdict 'fail': one more of a run of failures with no answer between; enough of them, across more than
-- one request and more than one model, is the upstream failing, not one request or provider.
local calls = redis.call('HINCRBY', KEYS[4], 'calls', 1)
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('SADD', KEYS[6], ARGV[6])
for i = 4, 6 do redis.call('PEXPIRE', KEYS[i], 600000) end
if calls >= tonumber(ARGV[7]) and redis.call('SCARD', KEYS[5]) >= 2 and redis.call('SCARD', KEYS[6]) >= 2 then
  return trip()
end
return 'ok'
"""
)

# KEYS: inflight. ARGV: permit, ttl ms. Keeps a running call's permit, on Redis's clock like every other.
_RENEW = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: cooldown, tat. ARGV: until_ms, free. The cool-down only moves forward, and no free slot is reserved
# inside it.
_COOL_DOWN = (
    _NOW
    + """
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
)

# KEYS: held. ARGV: the permit's fields, ms until its slot, ttl ms. Holds a slot for a request, its time on Redis's
# clock like every other.
_HOLD = (
    _NOW
    + """
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. (now + tonumber(ARGV[2])), 'PX', math.max(1, tonumber(ARGV[3])))
return 1
"""
)

# KEYS: held, inflight, day. ARGV: permit ttl ms, day_limit, day_ms. A slot held earlier for a request, taken back
# by its next task: {permit fields (the day it counts on now), ms until its slot, 'ok'}, counted against the day
# and in flight from now; {..., ms until the day ends, 'daily'} when the day's quota is spent meanwhile;
# {'unseeded', day} when Redis has no count for the day (the caller rebuilds it and asks again); nil when none is held.
_CLAIM_HELD = (
    _NOW
    + """
local held = redis.call('GET', KEYS[1])
if not held then return nil end
local id, free, day, probe, slot = string.match(held, '^(%w+):(%d):(%d+):(%d):(%d+)$')
if not id then
  redis.call('DEL', KEYS[1])
  return nil
end
local day_ms = tonumber(ARGV[3])
local today = math.floor(now / day_ms)
if free == '1' then
  local stored = redis.call('GET', KEYS[3])
  if not stored then return {'unseeded', today} end
  local count = 0
  local d, n = string.match(stored, '^(%d+):(%d+)$')
  if tonumber(d) == today then count = tonumber(n) end
  if count >= tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[1])
    return {id, free, today, probe, (today + 1) * day_ms - now, 'daily'}
  end
  redis.call('SET', KEYS[3], today .. ':' .. (count + 1), 'PX', math.max(2 * day_ms, 60000))
end
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[2], math.max(tonumber(slot), now) + tonumber(ARGV[1]), id)
return {id, free, today, probe, tonumber(slot) - now, 'ok'}
"""
)

# KEYS: day. ARGV: count, day_ms, day. Sets that day's count of free requests if Redis has none.
_SEED_DAY = (
    _NOW
    + """
local today = math.floor(now / tonumber(ARGV[2]))
if tostring(today) ~= ARGV[3] then return 0 end
local ttl = math.max(2 * tonumber(ARGV[2]), 60000)
return redis.call('SET', KEYS[1], today .. ':' .. ARGV[1], 'PX', ttl, 'NX') and 1 or 0
"""
)


class DeniedKind(StrEnum):
    """Why the throttle gave no slot."""

    DAILY = "daily"  # the free tier's day is spent
    RATE = "rate"  # the next free slot is further off than a worker holds one
    COOLDOWN = "cooldown"  # a 429 told every worker to wait
    OUTAGE = "outage"  # the outage breaker is open
    STOPPING = "stopping"  # the worker is stopping
    UNREACHABLE = "unreachable"  # Redis did not answer
    SLOT = "slot"  # a slot is held for the request (`acquire`'s `request_id`) at `wait_seconds` from now


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
    # The free tier's day: 86,400 s (a UTC day) but in tests and simulators.
    day_seconds: float = 86400.0
    # The outage breaker: failures in a row that open it, the first probe's delay, the longest between probes,
    # and how long a probe may take before another worker may probe instead.
    breaker_run: int = 6
    probe_base_seconds: float = 2.0
    probe_max_seconds: float = 60.0
    probe_ttl_seconds: float = 360.0
    # A wait for a slot or a cool-down longer than this is not slept in a worker's task (holding one of its
    # concurrency slots): the request waits in Postgres, its slot held for it. Shorter ones cost less slept.
    defer_seconds: float = 1.0

    @property
    def interval_ms(self) -> int:
        """GCRA spacing between two free requests, margin included."""
        return max(1, round(self.window_seconds * 1000 / self.free_per_window * (1 + self.margin)))

    @property
    def day_ms(self) -> int:
        """The free tier's day in milliseconds."""
        return max(1000, round(self.day_seconds * 1000))


@dataclass(slots=True, frozen=True)
class Permit:
    """Leave to send one request now; hand it back with `release`."""

    id: str
    free: bool
    # The free tier's day the slot was booked on (a refund goes back to it).
    day: int
    # This call is the outage breaker's probe: its outcome opens or closes the breaker for everyone.
    probe: bool = False


@dataclass(slots=True, frozen=True)
class Denied:
    """No slot within the longest wait a worker holds: why, and how long until one may be free."""

    kind: DeniedKind
    wait_seconds: float


async def _sleep(seconds: float, stop: asyncio.Event | None) -> bool:
    """Sleep, or wake early when `stop` is set; True when woken by it."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class Throttle:
    """The fleet-wide limiter; one per worker process, all sharing the same Redis keys."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        limits: ThrottleLimits,
        count_since: Callable[[datetime], Awaitable[int]],
    ) -> None:
        self.redis = redis
        self.limits = limits
        # Free calls already made since a moment, from Postgres: rebuilds the day's count when Redis has none.
        self.count_since = count_since
        self.namespace = namespace
        names = {
            "tat": "free-tat",
            "day": "free-day",
            "inflight": "in-flight",
            "cool_free": "cooldown:free",
            "cool_paid": "cooldown:paid",
            "streak": "breaker-streak",
            "streak_requests": "breaker-streak-requests",
            "streak_models": "breaker-streak-models",
        }
        self.keys = {k: THROTTLE_KEY.format(queue=namespace, name=v) for k, v in names.items()}
        self.keys["breaker"] = breaker_key(namespace)
        self._reserve = redis.register_script(_RESERVE)
        self._confirm = redis.register_script(_CONFIRM)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)
        self._cool_down = redis.register_script(_COOL_DOWN)
        self._seed_day = redis.register_script(_SEED_DAY)
        self._claim_held = redis.register_script(_CLAIM_HELD)
        self._hold_slot = redis.register_script(_HOLD)

    def _cooldown_key(self, free: bool) -> str:
        return self.keys["cool_free" if free else "cool_paid"]

    async def _try(self, permit_id: str, free: bool, may_hold: bool = False) -> tuple[bool, float, str, int]:
        limits = self.limits
        result: Any = await self._reserve(
            keys=[
                self.keys["tat"],
                self.keys["day"],
                self.keys["inflight"],
                self._cooldown_key(free),
                self.keys["breaker"],
            ],
            args=[
                permit_id,
                "1" if free else "0",
                limits.interval_ms,
                limits.free_per_day,
                limits.max_in_flight,
                int(limits.permit_ttl_seconds * 1000),
                int(limits.max_wait_seconds * 1000),
                limits.day_ms,
                int(limits.probe_ttl_seconds * 1000),
                int(limits.defer_seconds * 1000) if may_hold else -1,
            ],
        )
        kind = result[2].decode() if isinstance(result[2], bytes) else str(result[2])
        return int(result[0]) == 0, int(result[1]) / 1000, kind, int(result[3])

    def _held_key(self, request_id: int) -> str:
        return THROTTLE_KEY.format(queue=self.namespace, name=f"held:{request_id}")

    async def _hold(self, request_id: int, permit: Permit, wait: float) -> None:
        """Keep a reserved slot for the request's next task, which the request waits for in Postgres."""
        await self._hold_slot(
            keys=[self._held_key(request_id)],
            args=[
                f"{permit.id}:{int(permit.free)}:{permit.day}:{int(permit.probe)}",
                int(wait * 1000),
                int((wait + self.limits.permit_ttl_seconds) * 1000),
            ],
        )

    async def _held(self, request_id: int) -> tuple[Permit, float] | Denied | None:
        """The slot held for the request, and how long until it; Denied('daily') when the day's quota was spent
        meanwhile; None when none is held."""
        limits = self.limits
        while True:
            result: Any = await self._claim_held(
                keys=[self._held_key(request_id), self.keys["inflight"], self.keys["day"]],
                args=[int(limits.permit_ttl_seconds * 1000), limits.free_per_day, limits.day_ms],
            )
            if result is None:
                return None
            text = [v.decode() if isinstance(v, bytes) else str(v) for v in result]
            if text[0] == "unseeded":
                await self._seed(int(text[1]))
                continue
            if text[5] == "daily":
                return Denied(DeniedKind.DAILY, int(text[4]) / 1000)
            permit = Permit(text[0], text[1] == "1", int(text[2]), probe=text[3] == "1")
            return permit, max(0, int(text[4])) / 1000

    async def acquire(
        self, free: bool, stop: asyncio.Event | None = None, request_id: int | None = None
    ) -> Permit | Denied:
        """A permit to send now (after sleeping for a slot a moment away), or the wait that denies one.

        With `request_id`, a slot further away than `defer_seconds` is held for that request (Denied('slot')) and
        the task gives its worker slot back: the request comes back when the slot does, and takes it then. When
        `stop` is set while waiting, the slot is given back and the answer is Denied('stopping').
        """
        in_flight_wait = 0.02
        # Only a free request's slot is ever held: a paid one costs no extra round trip here.
        held = await self._held(request_id) if request_id is not None and free else None
        if isinstance(held, Denied):
            return held
        while True:
            if stop is not None and stop.is_set():
                if held is not None:
                    await self.release(held[0], "unsent")
                return Denied(DeniedKind.STOPPING, 0.0)
            if held is not None:
                (permit, wait), held = held, None
                granted, kind = True, "probe" if permit.probe else "ok"
            else:
                permit_id = uuid.uuid4().hex
                granted, wait, kind, day = await self._try(permit_id, free, request_id is not None)
                permit = Permit(permit_id, free, day, probe=kind == "probe")
            if granted:
                permit_id = permit.id
                if kind == "held":
                    # Booked for the request, which waits in Postgres: the worker's slot goes to a call that can go.
                    await self._hold(request_id or 0, permit, wait)
                    return Denied(DeniedKind.SLOT, wait)
                if request_id is not None and wait > self.limits.defer_seconds:
                    # A paid slot a while away (the in-flight cap's): hand it back and come back then.
                    await self.release(permit, "unsent")
                    return Denied(DeniedKind.SLOT, wait)
                if wait > 0:
                    try:
                        stopped = await _sleep(wait, stop)
                    except asyncio.CancelledError:
                        await asyncio.shield(self.release(permit, "unsent"))
                        raise
                    if stopped:
                        await self.release(permit, "unsent")
                        return Denied(DeniedKind.STOPPING, 0.0)
                # A 429 may have set a cool-down, or the breaker opened, while this slot waited: the slot is void.
                confirm: Any = await self._confirm(
                    keys=[self._cooldown_key(free), self.keys["breaker"]], args=[permit_id]
                )
                cool = int(confirm) / 1000
                if cool == 0:
                    return permit
                await self.release(permit, "unsent")
                if cool < 0:
                    continue
                if cool > self.limits.max_wait_seconds or (
                    request_id is not None and cool > self.limits.defer_seconds
                ):
                    return Denied(DeniedKind.COOLDOWN, cool)
                if await _sleep(cool, stop):
                    return Denied(DeniedKind.STOPPING, 0.0)
                continue
            if kind == "unseeded":
                await self._seed(day)
                continue
            if kind == "in_flight":
                # Permits free up as calls end; poll with jitter so waiters do not wake together.
                if await _sleep(in_flight_wait * (0.5 + random.random()), stop):
                    return Denied(DeniedKind.STOPPING, 0.0)
                in_flight_wait = min(in_flight_wait * 2, 1.0)
                continue
            holds_slot = request_id is not None and wait > self.limits.defer_seconds
            if wait <= self.limits.max_wait_seconds and kind not in ("daily", "outage") and not holds_slot:
                if await _sleep(wait, stop):
                    return Denied(DeniedKind.STOPPING, 0.0)
                continue
            return Denied(DeniedKind(kind), wait)

    async def _seed(self, day: int) -> None:
        """Rebuild the day's free count from Postgres after Redis lost it (or before the first free call)."""
        since = datetime.fromtimestamp(day * self.limits.day_ms / 1000, UTC)
        count = await self.count_since(since)
        await self._seed_day(keys=[self.keys["day"]], args=[count, self.limits.day_ms, day])

    async def renew(self, permit: Permit) -> None:
        """Keep a permit of a call still running; a dead worker's permits lapse after one TTL."""
        await self._renew(
            keys=[self.keys["inflight"]], args=[permit.id, int(self.limits.permit_ttl_seconds * 1000)]
        )

    async def release(
        self,
        permit: Permit,
        verdict: Verdict,
        request_id: int = 0,
        model: str = "",
        reason: str = "",
    ) -> str:
        """Hand a permit back with what the call showed of the upstream; 'open' when the breaker is open after it.

        A free request never sent gives its day's count back too.
        """
        limits = self.limits
        result: Any = await self._release(
            keys=[
                self.keys["inflight"],
                self.keys["day"],
                self.keys["breaker"],
                self.keys["streak"],
                self.keys["streak_requests"],
                self.keys["streak_models"],
            ],
            args=[
                permit.id,
                "1" if permit.free and verdict == "unsent" else "0",
                permit.day,
                verdict,
                request_id,
                model,
                limits.breaker_run,
                int(limits.probe_base_seconds * 1000),
                int(limits.probe_max_seconds * 1000),
                reason[:300],
            ],
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    async def cool_down(self, free: bool, until_ms: int) -> float:
        """Hold every worker's requests of this kind until `until_ms` (ms since the epoch); seconds left."""
        left = await self._cool_down(
            keys=[self._cooldown_key(free), self.keys["tat"]], args=[until_ms, "1" if free else "0"]
        )
        return int(left) / 1000

    async def breaker(self) -> BreakerState | None:
        """The outage breaker's state, or None while it is closed."""
        return await read_breaker(self.redis, self.namespace)
