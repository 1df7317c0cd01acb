"""The simulated free tier: a sliding per-minute window, a per-day count, their 429s, and `GET /key`'s limits.

`speed` scales the free tier's clock as a whole: at 10 the per-minute window lasts 6 s and a day 8,640 s.
`free_window_seconds` and `day_seconds` override either. Simulated day N runs from N * day_seconds to (N + 1) *
day_seconds in epoch seconds, so at speed 1 days are UTC days, and a 429 for the daily limit carries the end of
the simulated day in `X-RateLimit-Reset`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from jobs.simulator.config import DAY_SECONDS, SimConfig

__all__ = ["FreeTier", "Refusal", "day_index", "day_seconds", "limits", "too_many_requests"]


def day_seconds(cfg: SimConfig) -> float:
    """The length of a simulated day."""
    return cfg.day_seconds or DAY_SECONDS


def day_index(cfg: SimConfig, now: float) -> int:
    """The number of the simulated day `now` falls in, counted from the epoch."""
    return int(now // day_seconds(cfg))


def _day_reset_ms(cfg: SimConfig, now: float) -> int:
    return int((day_index(cfg, now) + 1) * day_seconds(cfg) * 1000)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A free-tier limit a request ran into: its name as OpenRouter spells it, its size, and when it resets."""

    name: str
    limit: int
    reset_ms: int
    extra: str  # what OpenRouter's message adds after the limit's name


class FreeTier:
    """The free tier's counts: the requests in the current window and in the current simulated day."""

    def __init__(self, cfg: SimConfig, now: float) -> None:
        self.window: collections.deque[float] = collections.deque()
        self.day_count = 0
        self.day_index = day_index(cfg, now)

    def admit(self, cfg: SimConfig, now: float) -> Refusal | None:
        """None when a free request may go through (and counts it), else the limit it ran into."""
        day = day_index(cfg, now)
        if day != self.day_index:
            self.day_index, self.day_count = day, 0
        window = self.window
        while window and window[0] <= now - cfg.free_window_seconds:
            window.popleft()
        if self.day_count >= cfg.free_per_day:
            limit_name = "free-models-per-day" if cfg.is_free_tier else "free-models-per-day-high-balance"
            extra = " Add 10 credits to unlock 1000 free model requests per day" if cfg.is_free_tier else ""
            return Refusal(limit_name, cfg.free_per_day, _day_reset_ms(cfg, now), extra)
        if len(window) >= cfg.free_per_minute:
            # Failed attempts count against the day, as OpenRouter documents.
            self.day_count += 1
            reset_ms = int((window[0] + cfg.free_window_seconds) * 1000)
            return Refusal("free-models-per-min", cfg.free_per_minute, reset_ms, "")
        window.append(now)
        self.day_count += 1
        return None


def too_many_requests(refusal: Refusal) -> web.Response:
    """The 429 OpenRouter sends for a free-tier limit: its headers, repeated in the error's metadata."""
    headers = {
        "X-RateLimit-Limit": str(refusal.limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(refusal.reset_ms),
    }
    body = {
        "error": {
            "code": 429,
            "message": f"Rate limit exceeded: {refusal.name}. {refusal.extra}".rstrip() + " ",
            "metadata": {"headers": headers, "provider_name": None},
        },
        "user_id": "user_sim",
    }
    return web.Response(status=429, body=orjson.dumps(body), headers=headers, content_type="application/json")


def limits(cfg: SimConfig, now: float, instance: str, counting_since: float) -> dict[str, Any]:
    """The free tier as it is enforced now: `GET /key`'s `data.simulator`.

    `day_started_at` is the epoch second the current simulated day began, so a client takes the day's number as
    round(day_started_at / day_seconds) and its reset as day_started_at + day_seconds.
    """
    return {
        "free_per_minute": cfg.free_per_minute,
        "free_window_seconds": cfg.free_window_seconds,
        "free_per_day": cfg.free_per_day,
        "day_seconds": day_seconds(cfg),
        "day_started_at": day_index(cfg, now) * day_seconds(cfg),
        "speed": cfg.speed,
        "instance": instance,
        "counting_since": counting_since,
    }
