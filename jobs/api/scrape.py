"""`GET /metrics` on the server: Prometheus's scrape, open unless ORBATCH_METRICS_TOKEN asks for a bearer token."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from jobs.api.state import api_state
from jobs.core.errors import Unauthorized
from jobs.observation.exposition import CHALLENGE, CONTENT_TYPE, metrics_authorized, render_metrics

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """This process's counters (its in-process worker's too) and the fleet's gauges, as Prometheus text."""
    state = api_state(request)
    if not metrics_authorized(state.settings, request.headers.get("authorization")):
        raise MetricsUnauthorized("/metrics wants `Authorization: Bearer <ORBATCH_METRICS_TOKEN>`")
    return Response(await render_metrics(state.redis, state.settings), media_type=CONTENT_TYPE)


class MetricsUnauthorized(Unauthorized):
    """A scrape without the metrics token."""

    def headers(self) -> dict[str, str]:
        """The challenge Prometheus's `authorization` config answers."""
        return dict(CHALLENGE)
