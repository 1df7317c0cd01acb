"""The ASGI application: OpenAI's Files and Batches API under `/v1`, its OpenAPI document and docs pages."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import Depends, FastAPI
from starlette.types import ASGIApp

from jobs.api import batches, files, pages, scrape
from jobs.api.auth import loopback_host_only
from jobs.api.cache import BatchCache
from jobs.api.errors import install_error_handlers
from jobs.api.inputs import checked_request
from jobs.api.maintenance import maintain
from jobs.api.middleware import BodyGuard, RequestIds
from jobs.api.responses import as_answered
from jobs.api.state import ApiState
from jobs.core.constants import CALLBACK_TIMEOUT_SECONDS
from jobs.core.db import create_engine
from jobs.core.settings import Settings
from jobs.scheduling.queue import connect
from jobs.submission.catalog import upstream_simulator

__all__ = ["create_app"]

_DESCRIPTION = """
OpenAI's Batch API in front of OpenRouter: upload a JSONL file of chat requests (`POST /v1/files`), create a
batch from it (`POST /v1/batches`), poll it, and download its output and error files. Point the official
`openai` SDK at `http://HOST:PORT/v1` with an orbatch key (`orbatch keys create NAME`). The same server shows
a dashboard of the batches and the fleet at `/`.

Every error has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`; a parameter holding NUL,
bytes that are not UTF-8, or more than 2048 characters is a 400 naming it. Every answer carries an
`x-request-id` (`req_` and 32 hex digits), under which the server logs the request. A batch carries orbatch's
own fields (cost in USD, model chain, pause reason) under `orbatch`.
"""


class _OrbatchApi(FastAPI):
    """FastAPI with each request's id outside every other layer (Starlette's last-resort 500 included), and an
    OpenAPI document that says what the app answers."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIds(super().build_middleware_stack())

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = as_answered(super().openapi())
        return self.openapi_schema


def create_app(settings: Settings, *, no_auth: bool = False, maintenance: bool = True) -> FastAPI:
    """The application over the services the settings name; `no_auth` serves every request as `local`.

    `maintenance` runs the finalizer, callbacks and file expiry in this process (every instance may).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # No pre-ping: it would add three round trips to every request; a lost connection is a 503 once and
        # recycles the pool. Uploads and downloads hold a connection while they stream, so the pool may
        # overflow to twice its size before a request waits.
        engine = create_engine(settings.database_url, pool_size=settings.api_db_pool, pre_ping=False)
        redis = await connect(settings.redis_url, settings.queue_name, patient=False)
        # Callbacks go only where the allow list says: no proxies from the environment, no redirects.
        client = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False)
        key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
        simulated = await upstream_simulator(settings.openrouter_base_url, key)
        app.state.api = ApiState(
            settings=settings,
            engine=engine,
            reads=engine.execution_options(isolation_level="AUTOCOMMIT"),
            redis=redis,
            batches=BatchCache(settings.api_batch_cache_seconds),
            no_auth=no_auth,
            simulated=simulated,
            simulated_at=time.monotonic(),
        )
        task = asyncio.create_task(maintain(engine, client, settings)) if maintenance else None
        # Everything made so far (modules, the app, its clients) lives as long as the process: kept out of
        # the collector's full passes, which otherwise stall every request for tens of milliseconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await client.aclose()
            await redis.aclose()
            await engine.dispose()

    app = _OrbatchApi(
        title="orbatch",
        summary="OpenAI's Batch API over OpenRouter",
        description=_DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        # A request's every parameter and header is checked before any route reads it (inputs.py).
        dependencies=[Depends(loopback_host_only), Depends(checked_request)],
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyGuard, max_upload_bytes=settings.max_upload_bytes, idle_seconds=settings.upload_idle_seconds
    )
    app.include_router(files.router, prefix="/v1")
    app.include_router(batches.router, prefix="/v1")
    app.include_router(scrape.router)
    app.include_router(pages.router)
    pages.mount_static(app)
    return app
