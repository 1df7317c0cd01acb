"""What a scrape of `/metrics` answers, on a worker's port or the server: the text, and who may read it."""

from __future__ import annotations

import asyncio
import hmac

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from redis.asyncio import Redis

from jobs.core.constants import FLEET_READ_SECONDS
from jobs.core.logs import get_logger
from jobs.core.settings import Settings
from jobs.observation import metrics
from jobs.observation.gauges import FleetCollector, read_fleet_gauges

__all__ = ["CHALLENGE", "CONTENT_TYPE", "metrics_authorized", "render_metrics"]

log = get_logger(__name__)

# Prometheus's classic text format, which every Prometheus version (and KEDA, and prometheus-adapter) reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# The header a 401 carries, so a client knows a bearer token is wanted.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="orbatch metrics"'}


def metrics_authorized(settings: Settings, authorization: str | None) -> bool:
    """Whether a scrape may read `/metrics`: always without ORBATCH_METRICS_TOKEN, else only with
    `Authorization: Bearer <token>` (compared in constant time)."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else ""
    if not token:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def render_metrics(
    redis: Redis, settings: Settings, registry: CollectorRegistry = metrics.REGISTRY
) -> bytes:
    """This process's metrics, then the fleet's gauges read from Redis now (no Postgres), as Prometheus text.

    `orbatch_redis_up` says whether the fleet's gauges could be read: a Redis outage leaves the process's own
    counters readable rather than failing the scrape.
    """
    metrics.BUILD.info({"version": metrics.orbatch_version()})
    gauges = None
    try:
        async with asyncio.timeout(FLEET_READ_SECONDS):
            gauges = await read_fleet_gauges(redis, settings)
    except Exception as exc:  # a scrape must answer with what it has
        log.warning("could not read the fleet's gauges from Redis", error=str(exc))
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(FleetCollector(gauges))
    return generate_latest(registry) + generate_latest(fleet)
