"""The simulator's settings: the scripted answers, the configuration, and `orbatch simulator`'s options.

Kept apart from the server (`jobs.simulator.server`, on aiohttp) so the CLI can offer the command's options without
importing a web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

__all__ = [
    "DAY_SECONDS",
    "MINUTE_SECONDS",
    "Rule",
    "SimConfig",
    "config_from_args",
    "simulator_command",
    "simulator_main",
]

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


def _positive(value: float | None, option: str) -> None:
    if value is not None and value <= 0:
        raise typer.BadParameter("must be above 0", param_hint=option)


def _make_config(
    *,
    latency_ms: float,
    free_per_minute: int,
    free_window_seconds: float | None,
    free_per_day: int | None,
    day_seconds: float | None,
    speed: float,
    free_tier: bool,
    credits: float | None,
    no_record: bool,
) -> SimConfig:
    _positive(speed, "--speed")
    _positive(free_window_seconds, "--free-window-seconds")
    _positive(day_seconds, "--day-seconds")
    if day_seconds is None and speed != 1:
        day_seconds = DAY_SECONDS / speed
    return SimConfig(
        latency_ms=latency_ms,
        free_per_minute=free_per_minute,
        free_window_seconds=MINUTE_SECONDS / speed if free_window_seconds is None else free_window_seconds,
        # An account that bought $10 of credits gets 1000 free requests a day instead of 50.
        free_per_day=(50 if free_tier else 1000) if free_per_day is None else free_per_day,
        day_seconds=day_seconds,
        speed=speed,
        is_free_tier=free_tier,
        credits=credits,
        record_calls=not no_record,
    )


def simulator_command(
    host: Annotated[
        str, typer.Option(help="Address to listen on. Keep it on loopback: the simulator checks no key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 takes a free one.")] = 8787,
    latency_ms: Annotated[
        float, typer.Option(help="Milliseconds every answer takes, as a model would.")
    ] = 0.0,
    free_per_minute: Annotated[
        int, typer.Option(help="Free-model requests allowed in any window (OpenRouter: 20 a minute).")
    ] = 20,
    free_window_seconds: Annotated[
        float | None,
        typer.Option(help="Length of that window in seconds.", show_default="60 / speed"),
    ] = None,
    free_per_day: Annotated[
        int | None,
        typer.Option(
            help="Free-model requests allowed per (simulated) day.",
            show_default="50; 1000 with --no-free-tier",
        ),
    ] = None,
    day_seconds: Annotated[
        float | None,
        typer.Option(
            help="Length of a simulated day in seconds (days run from the epoch, as UTC days do).",
            show_default="86400 / speed: real UTC days at speed 1",
        ),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(
            help="How many times faster than real time the free tier's clock runs: at 10 the minute lasts "
            "6 s and the day 8,640 s, so a spent daily quota comes back within hours, not at 00:00 UTC."
        ),
    ] = 1.0,
    free_tier: Annotated[
        bool,
        typer.Option(
            "--free-tier/--no-free-tier",
            help="Answer as an account that never bought credits, or (--no-free-tier) one that bought $10: "
            "GET /key's is_free_tier, the daily limit's default and its 429's name.",
        ),
    ] = True,
    credits: Annotated[
        float | None,
        typer.Option(
            help="The key's credit limit in USD, as GET /key reports it; 0 or less answers every call with "
            "402 (no credits).",
            show_default="no limit",
        ),
    ] = None,
    no_record: Annotated[
        bool, typer.Option("--no-record", help="Keep no request bodies (long benchmarks).")
    ] = False,
) -> None:
    """Serve the OpenRouter simulator on loopback: no key, no quota, no real model; answers echo the prompts."""
    config = _make_config(
        latency_ms=latency_ms,
        free_per_minute=free_per_minute,
        free_window_seconds=free_window_seconds,
        free_per_day=free_per_day,
        day_seconds=day_seconds,
        speed=speed,
        free_tier=free_tier,
        credits=credits,
        no_record=no_record,
    )
    from jobs.simulator.server import serve_forever

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(config, host, port))


_cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
_cli.command()(simulator_command)


def config_from_args(argv: Sequence[str]) -> SimConfig:
    """A simulator configuration from `orbatch simulator`'s options (for `orbatch run --simulator`)."""
    command = typer.main.get_command(_cli)
    try:
        with command.make_context("orbatch simulator", list(argv)) as ctx:
            params = dict(ctx.params)
        del params["host"], params["port"]
        return _make_config(**params)
    except typer.TyperException as exc:
        print(f"orbatch simulator: error: {exc.format_message()}", file=sys.stderr)
        raise SystemExit(2) from exc


def simulator_main(argv: Sequence[str] | None = None) -> None:
    """Run the simulator until interrupted (`python -m jobs.simulator.server --help` lists its options)."""
    typer.main.get_command(_cli).main(
        args=None if argv is None else list(argv), prog_name="orbatch simulator"
    )
