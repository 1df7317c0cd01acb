"""The free tier a worker applies: set explicitly, else what GET /key says (OpenRouter's or the simulator's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from jobs.core.settings import Settings
from tests.support import TEST_API_KEY, Simulator
from worker.account import account_limits
from worker.openrouter import OpenRouterClient


def client_for(base_url: str) -> OpenRouterClient:
    return OpenRouterClient(
        base_url, TEST_API_KEY, timeout=5, connect_timeout=1, max_connections=2, app_url="x", app_title="x"
    )


@pytest.fixture
async def openrouter_key() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A server answering GET /key as OpenRouter does (no simulator fields); tests set `is_free_tier`."""
    data: dict[str, Any] = {"label": "sk-or-v1-abc...", "usage": 0, "limit": None, "is_free_tier": True}

    async def key(_: web.Request) -> web.Response:
        return web.json_response({"data": data})

    app = web.Application()
    app.router.add_get("/api/v1/key", key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/api/v1", data
    await runner.cleanup()


async def test_openrouter_s_key_decides_the_daily_quota_unless_it_is_set(
    openrouter_key: tuple[str, dict[str, Any]],
) -> None:
    base_url, data = openrouter_key
    client = client_for(base_url)
    try:
        limits = await account_limits(Settings(), client)
        assert (limits.free_per_day, limits.free_per_window, limits.window_seconds) == (50, 20, 60.0)
        assert not limits.simulated
        data["is_free_tier"] = False
        assert (await account_limits(Settings(), client)).free_per_day == 1000
        assert (await account_limits(Settings(free_requests_per_day=7), client)).free_per_day == 7
    finally:
        await client.aclose()


async def test_an_unreachable_key_endpoint_means_the_lower_quota() -> None:
    client = client_for("http://127.0.0.1:9/api/v1")
    try:
        assert (await account_limits(Settings(), client)).free_per_day == 50
    finally:
        await client.aclose()


async def test_in_front_of_the_simulator_a_worker_paces_by_the_simulator_s_own_limits(
    simulator: Simulator,
) -> None:
    await simulator.reset(free_per_minute=12, free_window_seconds=6, free_per_day=300, day_seconds=600)
    client = client_for(simulator.base_url)
    try:
        limits = await account_limits(Settings(), client)
        assert limits.simulated
        assert (limits.free_per_window, limits.window_seconds, limits.free_per_day, limits.day_seconds) == (
            12,
            6.0,
            300,
            600.0,
        )
        # A limit set in the environment still wins.
        mine = await account_limits(Settings(free_requests_per_day=5, free_window_seconds=1), client)
        assert (mine.free_per_day, mine.window_seconds, mine.free_per_window) == (5, 1.0, 12)
    finally:
        await client.aclose()
