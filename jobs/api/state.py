"""What every request of one running API shares: its settings, the database engine and Redis."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from arq.connections import ArqRedis
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.cache import BatchCache
from jobs.api.keys import Caller
from jobs.settings import Settings

__all__ = ["ApiState", "api_state"]


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
    # front of a simulator answer (and a real batch never gets its echoes).
    simulated: bool = False
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
