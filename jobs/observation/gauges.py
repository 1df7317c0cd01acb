"""The fleet's gauges, read from Redis when Prometheus scrapes: queue depth, workers alive, the free tier, the breaker.

Everything here is shared by the whole fleet, so any process (a worker, the server) reports the same values: a
dashboard takes `max` of them across targets, never `sum`. Each reading is a few Redis commands in two round trips
whatever the size of the batches: sorted-set counts and small keys, no SCAN, and no Postgres at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from jobs.core.constants import FREE_TIER_DAILY_REQUESTS, THROTTLE_KEY
from jobs.core.settings import Settings
from jobs.core.states import BatchPriority
from jobs.scheduling.fairness import TIER_BASE, TIER_WIDTH
from jobs.scheduling.fleet import (
    BreakerState,
    breaker_from,
    breaker_key,
    kind_queue,
    limits_key,
    throttle_namespace,
)
from jobs.scheduling.roster import Heartbeat, read_heartbeats

__all__ = ["ACCOUNTS", "AccountGauges", "FleetCollector", "FleetGauges", "read_fleet_gauges"]

# The accounts a fleet's throttle keeps apart (label `account`): OpenRouter's, and the simulator's, whose calls
# count against no real quota.
ACCOUNTS = ("openrouter", "simulator")


@dataclass(slots=True, frozen=True)
class AccountGauges:
    """One account's free tier, breaker, cool-downs and calls in flight, as the throttle keeps them in Redis."""

    account: str
    free_per_day: int
    free_used_today: int
    # When the free tier's day ends (epoch seconds): 00:00 UTC for OpenRouter, sooner for a fast simulator.
    day_ends_at: float
    breaker: BreakerState | None = None
    cooldown_free_seconds: float = 0.0
    cooldown_paid_seconds: float = 0.0
    # Throttle permits held by every worker of the fleet: the calls open now.
    calls_in_flight: int = 0
    # The per-minute limit the workers pace free requests by: so many per window, spaced with the margin.
    free_per_window: int = 20
    window_seconds: float = 60.0
    margin: float = 0.05
    # The free tier's day: 86,400 s for OpenRouter, shorter for a simulator whose clock runs fast.
    day_seconds: float = 86400.0

    @property
    def simulated(self) -> bool:
        """The account is a simulator's: its days are simulated days."""
        return self.account == "simulator"

    @property
    def free_left_today(self) -> int:
        """Free requests the day still allows."""
        return max(0, self.free_per_day - self.free_used_today)

    @property
    def pace_seconds(self) -> float:
        """Seconds between two free requests, as the throttle spaces them across the fleet."""
        return self.window_seconds / max(1, self.free_per_window) * (1 + self.margin)


@dataclass(slots=True, frozen=True)
class FleetGauges:
    """One reading of what the fleet shares in Redis."""

    # Jobs in the arq queues that are due now (an autoscaler's signal), and those scheduled for later.
    queue_ready: int = 0
    queue_deferred: int = 0
    # Jobs waiting in each kind's queue ("openrouter", "simulator"), by priority ("urgent", "normal",
    # "background", or "unordered" for a job fed before priorities existed).
    queued: dict[tuple[str, str], int] = field(default_factory=dict)
    workers: list[Heartbeat] = field(default_factory=list)
    accounts: list[AccountGauges] = field(default_factory=list)
    # The fleet's queue: a worker on it takes any batch of its kind; a `run`'s worker has a queue of its own.
    queue: str = ""


def _int(raw: bytes | None, default: int = 0) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def _seconds_left(until_ms: bytes | None, now_ms: int) -> float:
    return max(0, _int(until_ms) - now_ms) / 1000


async def read_fleet_gauges(redis: Redis, settings: Settings) -> FleetGauges:
    """Read the fleet's gauges from Redis; the limits are the ones the workers published, else the settings'."""
    queue = settings.queue_name
    namespaces = [throttle_namespace(queue, simulated) for simulated in (False, True)]
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        # The feeder scores a job by its place in the fair order, far below any time (jobs/scheduling/fairness.py); a
        # score above now is a job scheduled for later.
        for simulated in (False, True):
            kind = kind_queue(queue, simulated)
            for priority in BatchPriority:
                base = TIER_BASE[priority]
                pipe.zcount(kind, base, f"({base + TIER_WIDTH}")
            pipe.zcount(kind, "-inf", now_ms)
            pipe.zcount(kind, f"({now_ms}", "+inf")
        for namespace in namespaces:
            pipe.hgetall(limits_key(namespace))
            pipe.get(THROTTLE_KEY.format(queue=namespace, name="free-day"))
            pipe.hgetall(breaker_key(namespace))
            pipe.get(THROTTLE_KEY.format(queue=namespace, name="cooldown:free"))
            pipe.get(THROTTLE_KEY.format(queue=namespace, name="cooldown:paid"))
            # Permits are scored by their expiry: a killed worker's lapse without anyone removing them.
            pipe.zcount(THROTTLE_KEY.format(queue=namespace, name="in-flight"), f"({now_ms}", "+inf")
        replies = await pipe.execute()
    seconds, micros = replies[0]
    # The throttle's day and cool-downs are on Redis's clock; so are these readings of them.
    redis_ms = int(seconds) * 1000 + int(micros) // 1000
    queued: dict[tuple[str, str], int] = {}
    ready = deferred = 0
    per_kind = len(BatchPriority) + 2
    for k, account in enumerate(ACCOUNTS):
        counts = replies[1 + per_kind * k : 1 + per_kind * (k + 1)]
        tiers = {str(level): int(c) for level, c in zip(BatchPriority, counts, strict=False)}
        due, later = int(counts[-2]), int(counts[-1])
        for level, count in tiers.items():
            queued[(account, level)] = count
        queued[(account, "unordered")] = max(0, due - sum(tiers.values()))
        ready, deferred = ready + due, deferred + later
    first = 1 + per_kind * len(ACCOUNTS)
    per_account = [replies[first + 6 * i : first + 6 + 6 * i] for i in range(len(namespaces))]
    published_any = any(part[0] for part in per_account)
    accounts: list[AccountGauges] = []
    for account, (published, day_count, breaker, cool_free, cool_paid, in_flight) in zip(
        ACCOUNTS, per_account, strict=True
    ):
        # An account no worker runs against is left out; OpenRouter's is shown, from the settings, before any
        # worker ever started.
        if not published and (published_any or account != ACCOUNTS[0]):
            continue
        per_day, used, day_ends_at = _free_day(settings, published, day_count, redis_ms)
        window = published.get(b"window_seconds")
        margin = published.get(b"margin")
        accounts.append(
            AccountGauges(
                account=account,
                free_per_day=per_day,
                free_used_today=used,
                day_ends_at=day_ends_at,
                breaker=breaker_from(breaker),
                cooldown_free_seconds=_seconds_left(cool_free, redis_ms),
                cooldown_paid_seconds=_seconds_left(cool_paid, redis_ms),
                calls_in_flight=int(in_flight),
                free_per_window=_int(published.get(b"free_per_window"), settings.free_requests_per_minute),
                window_seconds=float(window) if window else settings.free_window_seconds,
                margin=float(margin) if margin else settings.free_rate_margin,
                day_seconds=float(published.get(b"day_seconds") or settings.free_day_seconds),
            )
        )
    return FleetGauges(
        queue_ready=ready,
        queue_deferred=deferred,
        queued=queued,
        workers=await read_heartbeats(redis, queue),
        accounts=accounts,
        queue=queue,
    )


def _free_day(
    settings: Settings, published: dict[bytes, bytes], day_count: bytes | None, now_ms: int
) -> tuple[int, int, float]:
    """The daily limit, today's count (the throttle's `"<day>:<count>"`, if it is today's) and when today ends."""
    per_day = published.get(b"free_per_day")
    day_seconds = float(published.get(b"day_seconds") or settings.free_day_seconds)
    today = int(now_ms / 1000 // day_seconds)
    used = 0
    if day_count:
        day, _, count = day_count.decode().partition(":")
        if day.isdigit() and int(day) == today:
            used = _int(count.encode())
    limit = int(per_day) if per_day else settings.free_requests_per_day or FREE_TIER_DAILY_REQUESTS
    return limit, used, (today + 1) * day_seconds


class FleetCollector(Collector):
    """A reading of the fleet's gauges as Prometheus metric families (registered on a registry per scrape)."""

    def __init__(self, gauges: FleetGauges | None) -> None:
        # None: Redis could not be read for this scrape; only `orbatch_redis_up 0` is said.
        self.gauges = gauges

    def collect(self) -> Iterable[Metric]:
        gauges = self.gauges
        yield GaugeMetricFamily(
            "orbatch_redis_up",
            "1 when the fleet's gauges were read from Redis for this scrape, else 0 (and they are left out).",
            value=0 if gauges is None else 1,
        )
        if gauges is None:
            return
        yield GaugeMetricFamily(
            "orbatch_queue_depth",
            "Jobs in the arq queue that are due now, across every batch (the autoscaling signal).",
            value=gauges.queue_ready,
        )
        yield GaugeMetricFamily(
            "orbatch_queue_deferred",
            "Jobs in the arq queue scheduled for later.",
            value=gauges.queue_deferred,
        )
        by_kind = GaugeMetricFamily(
            "orbatch_queue_jobs",
            "Jobs waiting in the queue of each kind of upstream (openrouter, simulator), by batch priority.",
            labels=["account", "priority"],
        )
        for (account, priority), count in sorted(gauges.queued.items()):
            by_kind.add_metric([account, priority], count)
        yield by_kind
        yield GaugeMetricFamily(
            "orbatch_workers_alive", "Workers whose heartbeat is live.", value=len(gauges.workers)
        )
        yield GaugeMetricFamily(
            "orbatch_fleet_concurrency",
            "Requests the live workers may hold at once, added up.",
            value=sum(w.concurrency for w in gauges.workers),
        )
        families = {
            "free_per_day": GaugeMetricFamily(
                "orbatch_free_requests_per_day",
                "Free-model requests the account may make per free-tier day.",
                labels=["account"],
            ),
            "used": GaugeMetricFamily(
                "orbatch_free_requests_used_today",
                "Free-model requests made in the free tier's current day.",
                labels=["account"],
            ),
            "left": GaugeMetricFamily(
                "orbatch_free_requests_left_today",
                "Free-model requests the current day still allows.",
                labels=["account"],
            ),
            "day_ends": GaugeMetricFamily(
                "orbatch_free_day_end_timestamp_seconds",
                "When the free tier's current day ends and its count starts again (00:00 UTC).",
                labels=["account"],
            ),
            "pace": GaugeMetricFamily(
                "orbatch_free_pace_seconds",
                "Seconds between two free-model requests, as the throttle spaces them across the fleet.",
                labels=["account"],
            ),
            "breaker": GaugeMetricFamily(
                "orbatch_breaker_open",
                "1 while the outage breaker holds every call back (OpenRouter unreachable), else 0.",
                labels=["account"],
            ),
            "probes": GaugeMetricFamily(
                "orbatch_breaker_failed_probes",
                "Probes that failed since the outage breaker opened.",
                labels=["account"],
            ),
            "cooldown": GaugeMetricFamily(
                "orbatch_cooldown_seconds",
                "Seconds left of a cool-down after a 429, by tier (free, paid); 0 when none.",
                labels=["account", "tier"],
            ),
            "in_flight": GaugeMetricFamily(
                "orbatch_fleet_calls_in_flight",
                "Upstream calls open now across every worker (the throttle's permits).",
                labels=["account"],
            ),
        }
        for a in gauges.accounts:
            label = [a.account]
            families["free_per_day"].add_metric(label, a.free_per_day)
            families["used"].add_metric(label, a.free_used_today)
            families["left"].add_metric(label, a.free_left_today)
            families["day_ends"].add_metric(label, a.day_ends_at)
            families["pace"].add_metric(label, a.pace_seconds)
            families["breaker"].add_metric(label, 0 if a.breaker is None else 1)
            families["probes"].add_metric(label, 0 if a.breaker is None else a.breaker.probes)
            families["cooldown"].add_metric([a.account, "free"], a.cooldown_free_seconds)
            families["cooldown"].add_metric([a.account, "paid"], a.cooldown_paid_seconds)
            families["in_flight"].add_metric(label, a.calls_in_flight)
        yield from families.values()
