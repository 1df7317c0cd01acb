"""What the workers share in Redis that anyone may read: the limits they apply and the outage breaker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from jobs.core.constants import LIMITS_KEY, THROTTLE_KEY

__all__ = [
    "BreakerState",
    "breaker_from",
    "breaker_key",
    "kind_queue",
    "limits_key",
    "read_breaker",
    "throttle_namespace",
]


def breaker_key(namespace: str) -> str:
    """The Redis hash that holds the outage breaker while it is open."""
    return THROTTLE_KEY.format(queue=namespace, name="breaker")


def _moment(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC)


@dataclass(slots=True, frozen=True)
class BreakerState:
    """The outage breaker while it is open: since when, how many probes failed, what the last failure said."""

    since: datetime
    probes: int
    next_probe: datetime
    probing: bool
    reason: str

    def describe(self) -> str:
        """`OpenRouter unreachable since HH:MM UTC (N probes)`, as status and progress lines show it."""
        probes = f"{self.probes} probe{'s' if self.probes != 1 else ''}"
        return f"OpenRouter unreachable since {self.since:%H:%M} UTC ({probes}; last: {self.reason})"

    def probe_due(self, now: datetime) -> bool:
        """True when a probe may go: its time has come and no other probe is in flight."""
        return not self.probing and now >= self.next_probe


async def read_breaker(redis: Redis, namespace: str) -> BreakerState | None:
    """The outage breaker's state, or None while it is closed."""
    raw: dict[bytes, bytes] = await redis.hgetall(breaker_key(namespace))  # type: ignore[misc]
    return breaker_from(raw)


def breaker_from(raw: dict[bytes, bytes]) -> BreakerState | None:
    """The outage breaker's state from its hash as read (in a pipeline, say); None while it is closed."""
    if b"since" not in raw:
        return None
    probe_until = int(raw.get(b"probe_until", b"0"))
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    return BreakerState(
        since=_moment(raw[b"since"]),
        probes=int(raw.get(b"probes", b"0")),
        next_probe=_moment(raw.get(b"next_probe", raw[b"since"])),
        probing=b"probe" in raw and probe_until > now_ms,
        reason=raw.get(b"reason", b"").decode(errors="replace"),
    )


def kind_queue(queue_name: str, simulated: bool) -> str:
    """The arq queue of one kind of upstream's batches: workers in front of OpenRouter take jobs from the
    deployment's queue, workers in front of a simulator from its `:sim` twin, so neither takes the other's."""
    return f"{queue_name}:sim" if simulated else queue_name


def throttle_namespace(queue_name: str, simulated: bool) -> str:
    """Where the throttle's keys (and the limits it publishes) live: the queue's, or beside them for a simulator."""
    return f"{queue_name}:sim" if simulated else queue_name


def limits_key(namespace: str) -> str:
    """The Redis hash where workers publish the free-tier limits they apply."""
    return LIMITS_KEY.format(queue=namespace)
