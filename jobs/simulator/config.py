"""The simulator's settings: its configuration and the scripted answers (rules) it holds; no server, no CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DAY_SECONDS", "MINUTE_SECONDS", "Rule", "SimConfig"]

MINUTE_SECONDS = 60.0
DAY_SECONDS = 86400.0

_RULE_KINDS = (
    "status",
    "error_in_200",
    "top_level_error",
    "not_json",
    "hang",
    "reset",
    "reply",
    "trickle",
    "big",
)


@dataclass(slots=True)
class Rule:
    """A scripted answer for requests whose last user message contains `match`."""

    match: str
    kind: str = "status"
    status: int = 500
    times: int = -1  # how many requests it answers; -1 for all
    code: Any = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    content: str | None = None
    # hang: how long it hangs (None: an hour); trickle: how long it trickles (None: forever).
    seconds: float | None = None
    # For a scripted 429: X-RateLimit-Reset this many seconds from now, in the headers and the metadata.
    reset_in_seconds: float | None = None
    delay: float = 0.0  # seconds to wait before answering as the rule says
    interval: float = 0.3  # trickle: seconds between keep-alive bytes
    sse: bool = False  # trickle: SSE comment lines instead of spaces
    size: int = 1024 * 1024  # big: bytes in the body

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        rule = cls(**{k: v for k, v in data.items() if k in cls.__slots__})
        if rule.kind not in _RULE_KINDS:
            raise ValueError(f"rule kind must be one of {_RULE_KINDS}")
        if rule.interval <= 0:
            raise ValueError("a rule's interval must be above 0")
        return rule


@dataclass(slots=True)
class SimConfig:
    """How the simulator behaves; every field can be changed while it runs."""

    latency_ms: float = 0.0
    free_per_minute: int = 20
    free_window_seconds: float = MINUTE_SECONDS
    free_per_day: int = 50
    # Length of a simulated "day" for the daily quota; None means real UTC days.
    day_seconds: float | None = None
    # How much faster than real time the free tier's clock runs; setting it rescales the two lengths above.
    speed: float = 1.0
    down_models: list[str] = field(default_factory=list)
    valid_keys: list[str] | None = None
    is_free_tier: bool = True
    credits: float | None = None  # None: no credit check; 0 or less: 402 on every call
    record_calls: bool = True
    # Leave `usage.cost` out of answers (some providers and proxies do), to exercise cost estimates.
    omit_cost: bool = False
    # Answer as a bring-your-own-key call: `cost` is OpenRouter's fee, the provider's price is upstream.
    byok: bool = False
    # Chaos: the chance that any call fails with a 500, an error inside HTTP 200, or hangs for a while.
    chaos_500: float = 0.0
    chaos_error_in_200: float = 0.0
    chaos_hang: float = 0.0
    chaos_hang_seconds: float = 30.0
    rules: list[Rule] = field(default_factory=list)
    # Every call answers this 5xx until set back to None: OpenRouter down, or its providers (named) down.
    outage_status: int | None = None
    outage_provider_name: str | None = None
    # Say it is a simulator (a header on every answer, `data.simulator` in GET /key). Off, it passes for
    # OpenRouter itself: tests play a real upstream beside a simulator with it.
    identify: bool = True
