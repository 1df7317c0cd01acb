"""What the upstream account allows: its free-tier limits, from the settings or from `GET /key`.

OpenRouter's `GET /key` says whether the account ever bought credits (50 free requests a day, else 1000). The
simulator's adds its own limits and clock (`data.simulator`), so a worker in front of a simulator paces itself
exactly as the simulator enforces, and knows its calls are not a real account's. A limit set explicitly in the
environment always wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.core.constants import CREDITED_DAILY_REQUESTS, FREE_TIER_DAILY_REQUESTS
from jobs.core.logs import get_logger
from jobs.core.settings import Settings
from worker.openrouter import OpenRouterClient

__all__ = ["AccountLimits", "account_limits"]

log = get_logger(__name__)


@dataclass(slots=True, frozen=True)
class AccountLimits:
    """The free tier a worker applies, and whether the upstream is the simulator."""

    free_per_window: int
    window_seconds: float
    free_per_day: int
    day_seconds: float
    simulated: bool
    # A simulator's identity and the moment its counts began (a new or reset simulator counts from nothing).
    instance: str | None = None
    counting_since: float | None = None
    # GET /key answered: False while the upstream is unreachable and the defaults stand in.
    read: bool = True


def _number(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None
    )


async def account_limits(settings: Settings, client: OpenRouterClient, quiet: bool = False) -> AccountLimits:
    """The limits to apply: the settings set explicitly, else what GET /key reports, else the defaults."""
    explicit = settings.model_fields_set
    read = True
    try:
        key: dict[str, Any] = (await client.get_json("key"))["data"]
    except Exception as exc:  # a key endpoint that is down must not stop the worker; assume the lower limit
        if not quiet:
            log.warning("could not read GET /key; assuming the free tier's limits for now", error=str(exc))
        key, read = {}, False
        # A simulator answering an error still names itself: its batches are simulated ones all the same.
        instance = await client.simulator_instance()
        if instance is not None:
            key = {"simulator": {"instance": instance}}
    sim: dict[str, Any] = key.get("simulator") if isinstance(key.get("simulator"), dict) else {}  # type: ignore[assignment]
    credited = key.get("is_free_tier") is False
    reported_day = CREDITED_DAILY_REQUESTS if credited else FREE_TIER_DAILY_REQUESTS

    def pick(field: str, default: float, reported: float | None) -> float:
        if field in explicit or reported is None:
            value: Any = getattr(settings, field)
            return float(value) if value is not None else default
        return reported

    per_day = (
        settings.free_requests_per_day
        if "free_requests_per_day" in explicit and settings.free_requests_per_day is not None
        else int(_number(sim, "free_per_day") or reported_day)
    )
    return AccountLimits(
        free_per_window=int(
            pick(
                "free_requests_per_minute", settings.free_requests_per_minute, _number(sim, "free_per_minute")
            )
        ),
        window_seconds=pick(
            "free_window_seconds", settings.free_window_seconds, _number(sim, "free_window_seconds")
        ),
        free_per_day=per_day,
        day_seconds=pick("free_day_seconds", settings.free_day_seconds, _number(sim, "day_seconds")),
        simulated=bool(sim),
        instance=str(sim["instance"]) if sim.get("instance") else None,
        counting_since=_number(sim, "counting_since"),
        read=read,
    )
