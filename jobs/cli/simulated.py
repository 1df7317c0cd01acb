"""The simulator a `run --simulator` or a `serve --simulator` starts in its own process, and the settings that
point its worker at it."""

from __future__ import annotations

import contextlib
import shlex

from pydantic import SecretStr
from rich.console import Console
from rich.text import Text

from jobs.core.settings import Settings

__all__ = ["start_simulator"]

# `orbatch run --simulator` without ORBATCH_SIMULATOR_ARGS: the simulator's clock runs 60 times faster (its
# minute is a second, its day 24 minutes) and it answers as an account that bought credits (1000 free requests a
# day), so a trial shows the free tier's pacing and quota at work and never waits long for a simulated midnight.
RUN_SIMULATOR_ARGS = "--speed 60 --no-free-tier"

# The key the simulator is called with: it checks that one is sent, not which.
SIMULATOR_KEY = "sk-or-v1-simulator"


async def start_simulator(settings: Settings, stack: contextlib.AsyncExitStack, err: Console) -> Settings:
    """Serve the OpenRouter simulator on loopback for this process; the settings that point the worker at it."""
    from jobs.simulator.catalogue import API_PREFIX
    from jobs.simulator.main import config_from_args
    from jobs.simulator.server import Simulator, serve

    config = config_from_args(shlex.split(settings.simulator_args or RUN_SIMULATOR_ARGS))
    runner, port = await serve(Simulator(config), "127.0.0.1", 0)
    stack.push_async_callback(runner.cleanup)
    err.print(
        Text.assemble(
            ("simulator: ", "bold yellow"),
            "OpenRouter is simulated on this machine: no real model is called and no quota or money is used; "
            f"answers echo the prompts. Free tier: {config.free_per_minute} requests per "
            f"{config.free_window_seconds:g} s, {config.free_per_day} per day of "
            f"{(config.day_seconds or 86400) / 60:g} minutes (ORBATCH_SIMULATOR_ARGS changes them). It answers at "
            f"http://127.0.0.1:{port}{API_PREFIX} (OPENROUTER_BASE_URL for another command to use it); only "
            "simulated batches are worked here.",
        ),
        highlight=False,
    )
    return settings.model_copy(
        update={
            "openrouter_base_url": f"http://127.0.0.1:{port}{API_PREFIX}",
            "openrouter_api_key": SecretStr(SIMULATOR_KEY),
        }
    )
