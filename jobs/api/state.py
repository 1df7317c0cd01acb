"""What every request of one running API shares: its settings, the database engine and Redis."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from arq.connections import ArqRedis
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.cache import BatchCache
from jobs.api.keys import Caller
from jobs.core.settings import Settings
from jobs.submission.catalog import upstream_simulator

__all__ = ["ApiState", "api_state", "upstream_is_simulated"]

# A server asks its upstream whether it is a simulator again this often (and at every batch while it does not
# answer): a server pointed at a simulator that started after it, or at another upstream, learns it soon.
UPSTREAM_RECHECK_SECONDS = 30.0


@dataclass(slots=True)
class ApiState:
    """The shared clients of one app, made when it starts and closed when it stops."""

    settings: Settings
    # Transactions (uploads, creates, deletes).
    engine: AsyncEngine
    # The same pool in autocommit, for the reads a request makes: one round trip per statement, instead of
    # BEGIN, the statement and a ROLLBACK.
    reads: AsyncEngine
    redis: ArqRedis
    # Batch objects read lately, shared by the clients polling them.
    batches: BatchCache
    # Every request acts as the one owner `local` (a loopback-only server started with --no-auth).
    no_auth: bool
    # OPENROUTER_BASE_URL is orbatch's simulator: the batches made here are simulated ones, which only workers in
    # front of a simulator answer (and a real batch never gets its echoes). None: not known yet (the upstream
    # did not answer), asked again at the next batch; see `upstream_is_simulated`.
    simulated: bool | None = False
    simulated_at: float = 0.0
    # Keys seen lately (by digest), with when they were looked up: a poller's key costs no query per poll.
    known_keys: dict[str, tuple[float, Caller]] = field(default_factory=dict)
    # The form token of the dashboard's pages on a `--no-auth` server (signed-in browsers carry their session's):
    # a form posted from another site cannot know it.
    form_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # The dashboard's chart rows of a batch as last read (by batch and span), with when: see CHART_READ_SECONDS.
    chart_minutes: dict[tuple[str, timedelta], tuple[float, list[Any]]] = field(default_factory=dict)


def api_state(request: Request) -> ApiState:
    """The state of the app serving this request."""
    state: ApiState = request.app.state.api
    return state


async def upstream_is_simulated(state: ApiState) -> bool:
    """Whether batches made now are simulated: asked of the upstream again once in a while (a server started
    before its simulator, or pointed at another one, learns it), and at every batch while it does not answer."""
    now = time.monotonic()
    if state.simulated is None or now - state.simulated_at > UPSTREAM_RECHECK_SECONDS:
        settings = state.settings
        key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
        answer = await upstream_simulator(settings.openrouter_base_url, key)
        if answer is not None or state.simulated is None:
            state.simulated, state.simulated_at = answer, now
    return bool(state.simulated)
