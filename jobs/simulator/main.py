"""`orbatch simulator` and `python -m jobs.simulator`: the command's options, read into a `SimConfig`, and its run.

The server (on aiohttp) is imported only when the command runs, so the CLI offers the options without loading a
web server; nothing in the simulator imports this module back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import typer

from jobs.core.logs import configure_logging
from jobs.simulator.config import DAY_SECONDS, MINUTE_SECONDS, SimConfig

__all__ = ["BatchModelPolicy", "config_from_args", "simulator_command", "simulator_main"]


class BatchModelPolicy(StrEnum):
    """Which batch `model` slugs a create accepts (`SimConfig.batch_model_policy`)."""

    variant = "variant"
    either = "either"


def _positive(value: float | None, option: str) -> None:
    if value is not None and value <= 0:
        raise typer.BadParameter("must be above 0", param_hint=option)


def _pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """`MODEL=VALUE` options (repeatable) as a dict; BadParameter naming the option for a malformed one."""
    pairs: dict[str, str] = {}
    for given in values or ():
        model, equals, value = given.partition("=")
        model, value = model.strip(), value.strip()
        if not equals:
            raise typer.BadParameter(f"{given!r} is not MODEL=VALUE: it has no '='", param_hint=option)
        if not model:
            raise typer.BadParameter(f"{given!r} names no model before its '='", param_hint=option)
        if not value:
            raise typer.BadParameter(f"{given!r} gives no value after its '='", param_hint=option)
        pairs[model] = value
    return pairs


def _rates(values: Sequence[str] | None, option: str) -> dict[str, float]:
    """`MODEL=RATE` options as shares from 0 to 1."""
    rates: dict[str, float] = {}
    for model, value in _pairs(values, option).items():
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not 0 <= rate <= 1:  # NaN fails this too
            raise typer.BadParameter(
                f"the rate of {model} must be a number from 0 to 1, not {value!r}", param_hint=option
            )
        rates[model] = rate
    return rates


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
    batches: bool = True,
    batch_model_policy: BatchModelPolicy = BatchModelPolicy.variant,
    batch_validating_seconds: float = 1.0,
    batch_in_progress_seconds: float = 3.0,
    batch_finalizing_seconds: float = 1.0,
    batch_window_seconds: float = 86400.0,
    batch_expire: bool = False,
    batch_cancel: bool = True,
    err_rate: Sequence[str] | None = None,
    err_label: str | None = None,
    label_noise: Sequence[str] | None = None,
    fixed_label: Sequence[str] | None = None,
) -> SimConfig:
    _positive(speed, "--speed")
    _positive(free_window_seconds, "--free-window-seconds")
    _positive(day_seconds, "--day-seconds")
    _positive(batch_window_seconds, "--batch-window-seconds")
    for seconds, option in (
        (batch_validating_seconds, "--batch-validating-seconds"),
        (batch_in_progress_seconds, "--batch-in-progress-seconds"),
        (batch_finalizing_seconds, "--batch-finalizing-seconds"),
    ):
        if seconds < 0:
            raise typer.BadParameter("must be 0 or more", param_hint=option)
    if day_seconds is None and speed != 1:
        day_seconds = DAY_SECONDS / speed
    if err_label is not None and not err_label.strip():
        raise typer.BadParameter("must be a label, not empty", param_hint="--err-label")
    erring = _rates(err_rate, "--err-rate")
    noisy = _rates(label_noise, "--label-noise")
    fixed = _pairs(fixed_label, "--fixed-label")
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
        batches_enabled=batches,
        batch_model_policy=batch_model_policy.value,
        batch_validating_seconds=batch_validating_seconds,
        batch_in_progress_seconds=batch_in_progress_seconds,
        batch_finalizing_seconds=batch_finalizing_seconds,
        batch_window_seconds=batch_window_seconds,
        batch_expire=batch_expire,
        batch_cancel_allowed=batch_cancel,
        err_rate=erring,
        err_label=err_label,
        label_noise=noisy,
        fixed_label=fixed,
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
    batches: Annotated[
        bool,
        typer.Option(
            "--batches/--no-batches",
            help="Serve the Batch API (/api/v1/batches), or (--no-batches) answer 404 on every batch route, "
            "as OpenRouter does for a key it is not enabled for.",
        ),
    ] = True,
    batch_model_policy: Annotated[
        BatchModelPolicy,
        typer.Option(
            help="Which batch models a create accepts: 'variant' only :batch slugs (a base slug is a 400, as "
            "seen live), 'either' base slugs too, priced as their :batch variant. A model with no :batch "
            "variant fails after the 202."
        ),
    ] = BatchModelPolicy.variant,
    batch_validating_seconds: Annotated[
        float, typer.Option(help="Seconds a batch stays 'validating' (divided by --speed).")
    ] = 1.0,
    batch_in_progress_seconds: Annotated[
        float,
        typer.Option(help="Seconds a batch stays 'in_progress', its lines answered one by one over them."),
    ] = 3.0,
    batch_finalizing_seconds: Annotated[
        float, typer.Option(help="Seconds a batch stays 'finalizing' before 'completed'.")
    ] = 1.0,
    batch_window_seconds: Annotated[
        float,
        typer.Option(
            help="The provider's deadline after creation (expires_at; divided by --speed): lines not "
            "answered by then fail with batch_expired and the batch is 'expired'."
        ),
    ] = 86400.0,
    batch_expire: Annotated[
        bool,
        typer.Option(
            "--batch-expire", help="Make every batch expire, its deadline halfway through 'in_progress'."
        ),
    ] = False,
    batch_cancel: Annotated[
        bool,
        typer.Option(
            "--batch-cancel/--no-batch-cancel",
            help="Allow cancelling batches, or (--no-batch-cancel) answer 403, as for an organisation "
            "cancels are not enabled for.",
        ),
    ] = True,
    err_rate: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODEL=RATE",
            help="Make MODEL's replies to a JSON-schema request fail the schema at this rate (0 to 1), drawn "
            "per prompt and call; a correction turn is always answered right. Live calls and batch lines "
            "(MODEL's :batch variant too). Repeatable.",
        ),
    ] = None,
    err_label: Annotated[
        str | None,
        typer.Option(
            metavar="LABEL",
            help="An erring reply (--err-rate) puts this label in every enum field, instead of invalid JSON.",
            show_default="invalid JSON: a valid reply cut short",
        ),
    ] = None,
    label_noise: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODEL=RATE",
            help="On this share (0 to 1) of prompts, MODEL's structured replies put another valid value of its "
            "enum in every enum field: a plausible wrong label, the same on every run. Live calls and batch "
            "lines. Repeatable.",
        ),
    ] = None,
    fixed_label: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODEL=LABEL",
            help="MODEL always answers LABEL in every enum field whose enum holds it (valid JSON, always the "
            "same label). Live calls and batch lines. Repeatable.",
        ),
    ] = None,
) -> None:
    """Serve the OpenRouter simulator on loopback: no key, no quota, no real model; answers echo the prompts.

    Chat completions, embeddings (deterministic vectors) and the Batch API, whose batches finish in seconds
    (the --batch-* options); POST /_sim/config changes any setting while it runs.
    """
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
        batches=batches,
        batch_model_policy=batch_model_policy,
        batch_validating_seconds=batch_validating_seconds,
        batch_in_progress_seconds=batch_in_progress_seconds,
        batch_finalizing_seconds=batch_finalizing_seconds,
        batch_window_seconds=batch_window_seconds,
        batch_expire=batch_expire,
        batch_cancel=batch_cancel,
        err_rate=err_rate,
        err_label=err_label,
        label_noise=label_noise,
        fixed_label=fixed_label,
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
    """Run the simulator until interrupted (`python -m jobs.simulator --help` lists its options)."""
    # Its warnings (a batch callback that could not be delivered) go to stderr; `orbatch simulator` sets this up
    # through the CLI's own options.
    configure_logging(os.environ.get("ORBATCH_LOG_LEVEL", "WARNING"))
    typer.main.get_command(_cli).main(
        args=None if argv is None else list(argv), prog_name="orbatch simulator"
    )
