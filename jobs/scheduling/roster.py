"""Worker heartbeats in Redis: each live worker's host, pid, version, load and last activity, for anyone to read."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from jobs.core.constants import HEARTBEAT_KEY, HEARTBEATS_KEY
from jobs.scheduling.fleet import kind_queue

__all__ = ["Heartbeat", "forget_heartbeat", "no_taker", "read_heartbeats", "takers", "write_heartbeat"]

# Ids in the sorted set whose heartbeat is this old are dropped by the next beat of any worker: nobody may read
# the list for a long time, and a fleet that restarts often must not grow it for ever.
HEARTBEAT_FORGET_SECONDS = 3600.0


def _moment(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


@dataclass(slots=True, frozen=True)
class Heartbeat:
    """What one worker process said of itself at its last beat."""

    # host:pid:nonce, the owner its leases and attempt rows carry.
    id: str
    host: str
    pid: int
    version: str
    # The arq queue it takes jobs from: the deployment's, or a `run`'s own.
    queue: str
    concurrency: int
    # Upstream calls it has open now, and requests it holds (calling, or waiting for a throttle slot).
    in_flight: int
    tasks: int
    # Requests it answered since it started.
    answered: int
    started_at: datetime
    # When a task of it last started or ended; None before its first.
    last_activity: datetime | None
    beat_at: datetime
    # It was asked to stop and is letting its calls finish.
    stopping: bool = False
    # Its upstream is orbatch's simulator, not OpenRouter.
    simulated: bool = False

    def to_json(self) -> dict[str, Any]:
        """The heartbeat as `orbatch workers --json` prints it (times in ISO 8601, UTC)."""
        data = asdict(self)
        for name in ("started_at", "last_activity", "beat_at"):
            moment = data[name]
            data[name] = None if moment is None else moment.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Heartbeat:
        """A heartbeat as stored; fields a newer version added are ignored, so mixed fleets read each other."""
        known = {k: v for k, v in data.items() if k in cls.__slots__}
        for name in ("started_at", "beat_at"):
            known[name] = _moment(known[name])
        known["last_activity"] = _moment(known.get("last_activity"))
        return cls(**known)


def _key(queue_name: str, worker_id: str) -> str:
    return HEARTBEAT_KEY.format(queue=queue_name, id=worker_id)


async def write_heartbeat(redis: Redis, queue_name: str, beat: Heartbeat, ttl_seconds: float) -> None:
    """Record a beat that lapses after `ttl_seconds` unless the next one renews it."""
    index = HEARTBEATS_KEY.format(queue=queue_name)
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(_key(queue_name, beat.id), orjson.dumps(beat.to_json()), px=max(1, int(ttl_seconds * 1000)))
        pipe.zadd(index, {beat.id: now_ms})
        pipe.zremrangebyscore(index, "-inf", now_ms - int(HEARTBEAT_FORGET_SECONDS * 1000))
        await pipe.execute()


async def read_heartbeats(redis: Redis, queue_name: str) -> list[Heartbeat]:
    """The live workers, by host and pid: one read of the index and one of their heartbeats, no SCAN."""
    index = HEARTBEATS_KEY.format(queue=queue_name)
    ids = [raw.decode() for raw in await redis.zrange(index, 0, -1)]
    if not ids:
        return []
    values = await redis.mget([_key(queue_name, worker_id) for worker_id in ids])
    beats: list[Heartbeat] = []
    lapsed: list[str] = []
    for worker_id, raw in zip(ids, values, strict=True):
        if raw is None:
            lapsed.append(worker_id)
            continue
        try:
            beats.append(Heartbeat.from_json(orjson.loads(raw)))
        except (ValueError, TypeError, KeyError):
            continue  # a heartbeat this version cannot read still lapses by itself
    if lapsed:
        await redis.zrem(index, *lapsed)
    return sorted(beats, key=lambda b: (b.host, b.pid, b.id))


async def forget_heartbeat(redis: Redis, queue_name: str, worker_id: str) -> None:
    """Remove a worker's heartbeat at once: it stopped cleanly, so it need not wait for the beat to lapse."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(_key(queue_name, worker_id))
        pipe.zrem(HEARTBEATS_KEY.format(queue=queue_name), worker_id)
        await pipe.execute()


def takers(beats: list[Heartbeat], queue_name: str, batch_id: str, simulated: bool) -> list[Heartbeat]:
    """The live workers that can take a batch up: fleet workers in front of its kind of upstream (a simulator
    or OpenRouter), and the `orbatch run` that works it from its own queue."""
    own_queue = f"{queue_name}:run:{batch_id}"
    fleet_queue = kind_queue(queue_name, simulated)
    return [
        b
        for b in beats
        if not b.stopping and (b.queue == own_queue or (b.queue == fleet_queue and b.simulated == simulated))
    ]


def no_taker(simulated: bool, where: str) -> str:
    """Why a batch that can run does not move when no live worker can take it, and what starts one."""
    if simulated:
        return (
            f"no worker on {where} in front of a simulator can take this simulated batch: start one "
            "(`orbatch serve --simulator`, or `orbatch worker` with OPENROUTER_BASE_URL at `orbatch simulator`), "
            "or run the same file with `orbatch run FILE --simulator`"
        )
    return (
        f"no worker on {where} in front of OpenRouter can take this batch: start one with `orbatch worker` "
        "(or `orbatch serve`), or run the same file with `orbatch run FILE`"
    )
