"""Time left for a batch: the observed rate, bounded by the free tier's per-minute and daily limits."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["Estimate", "FreeLimits", "RateMeter", "estimate", "format_duration"]

_DAY = 86400.0


@dataclass(slots=True, frozen=True)
class FreeLimits:
    """The free tier as the workers apply it: requests per window (after the margin) and per UTC day."""

    per_window: int
    window_seconds: float
    per_day: int
    margin: float = 0.0
    # The free tier's day: a UTC day for OpenRouter, shorter for a simulator whose clock runs fast.
    day_seconds: float = _DAY
    # The limits are a simulator's: its days are said as simulated days, not as dates.
    simulated: bool = False

    @property
    def pace(self) -> float:
        """Free requests per second at most."""
        return self.per_window / self.window_seconds / (1 + self.margin)


@dataclass(slots=True, frozen=True)
class Estimate:
    """Seconds left (None: not known yet) and, when a limit decides it, why."""

    seconds: float | None
    reason: str | None = None


class RateMeter:
    """Requests finished per second over the last minute of samples."""

    def __init__(self, horizon_seconds: float = 60.0) -> None:
        self.horizon = horizon_seconds
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> None:
        """Record how many requests were finished at monotonic time `at`."""
        self.samples.append((at, done))
        while len(self.samples) > 2 and at - self.samples[0][0] > self.horizon:
            self.samples.popleft()

    @property
    def rate(self) -> float | None:
        """Requests per second, or None before two samples a second apart."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 >= 1.0 else None


def format_duration(seconds: float) -> str:
    """Short human form: 45s, 12m 5s, 3h 20m, 9d 14h."""
    s = max(0, math.ceil(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _day_ends(limits: FreeLimits, now: datetime) -> datetime:
    """When the free tier's current day ends: 00:00 UTC, or a simulated day's end (days run from the epoch)."""
    if limits.day_seconds == _DAY:
        return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    day = math.floor(now.timestamp() / limits.day_seconds)
    return datetime.fromtimestamp((day + 1) * limits.day_seconds, UTC)


def _free_seconds(remaining_free: int, used_today: int, limits: FreeLimits, now: datetime) -> float:
    """Seconds to send `remaining_free` free requests at the limits' pace, waiting out spent days."""
    pace = limits.pace
    left_today = max(0, limits.per_day - used_today)
    if remaining_free <= left_today:
        return remaining_free / pace
    if limits.per_day <= 0:
        return math.inf
    later = remaining_free - left_today
    full_days, last_day = divmod(later, limits.per_day)
    if last_day == 0:
        full_days, last_day = full_days - 1, limits.per_day
    day_left = (_day_ends(limits, now) - now).total_seconds()
    return day_left + full_days * limits.day_seconds + last_day / pace


def estimate(
    remaining: int,
    remaining_free: int,
    rate: float | None,
    limits: FreeLimits | None,
    used_today: int = 0,
    now: datetime | None = None,
) -> Estimate:
    """Seconds until `remaining` requests are done, of which `remaining_free` go to free models first."""
    if remaining <= 0:
        return Estimate(0.0)
    now = now or datetime.now(UTC)
    observed = remaining / rate if rate else None
    if limits is None or remaining_free <= 0:
        return Estimate(observed)
    free = _free_seconds(remaining_free, used_today, limits, now)
    left_today = max(0, limits.per_day - used_today)
    if remaining_free > left_today:
        more = math.ceil((remaining_free - left_today) / limits.per_day) if limits.per_day else math.inf
        days = more + (1 if left_today else 0)
        plural = "s" if days != 1 else ""
        if limits.simulated:
            # A simulator's day lasts minutes: said as what it is, with when the next one begins in wall time.
            length = format_duration(limits.day_seconds)
            next_day = format_duration((_day_ends(limits, now) - now).total_seconds())
            today = f"{left_today} of them now, the rest" if left_today else "none of them now; they go"
            reason = (
                f"the simulator allows {limits.per_day} free requests a simulated day ({length} of real time): "
                f"{remaining_free} requests need {days} simulated day{plural} of quota ({today} from its "
                f"next day, in {next_day})"
            )
        else:
            today = f"{left_today} of them today, the rest" if left_today else "none of them today; they go"
            reason = (
                f"free models allow {limits.per_day} requests a day: {remaining_free} requests need {days} "
                f"day{plural} of quota ({today} from 00:00 UTC)"
            )
    else:
        per_minute = limits.pace * 60
        reason = f"free models allow about {per_minute:.0f} requests a minute"
        if limits.simulated:
            window = limits.window_seconds
            reason = (
                f"the simulator allows about {limits.pace * window:.0f} free requests per {window:g} s "
                "(its minute)"
            )
    seconds = max(free, observed or 0.0)
    # The free limit decides only when it is the slower of the two; otherwise the rate speaks for itself.
    return Estimate(seconds, reason if observed is None or free >= observed * 0.9 else None)
