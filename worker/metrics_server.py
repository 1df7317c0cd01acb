"""A worker's `/metrics` on `--metrics-port`: an aiohttp server in the worker's own event loop.

In the loop, not in prometheus_client's thread, so the fleet's gauges are read with the worker's async Redis
client at scrape time, and nothing is shared between threads.
"""

from __future__ import annotations

import errno
import socket

from aiohttp import web
from redis.asyncio import Redis

from jobs.core.errors import SettingsError
from jobs.core.settings import Settings
from jobs.observation.exposition import CHALLENGE, CONTENT_TYPE, metrics_authorized, render_metrics

__all__ = ["MetricsServer"]


class MetricsServer:
    """The metrics endpoint of one worker process; `start` it, then `stop` it when the worker stops."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = 0

    async def _scrape(self, request: web.Request) -> web.Response:
        if not metrics_authorized(self.settings, request.headers.get("Authorization")):
            return web.Response(
                status=401, text="a bearer token is required (ORBATCH_METRICS_TOKEN)\n", headers=CHALLENGE
            )
        body = await render_metrics(self.redis, self.settings)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def start(self, port: int) -> int:
        """Listen on every interface at `port` (0: any free one); the port it listens on."""
        try:
            listener = _listener(port)
        except OSError as exc:
            raise SettingsError(
                f"ORBATCH_METRICS_PORT / --metrics-port {port}: cannot listen there ({exc.strerror or exc})"
            ) from None
        await self._runner.setup()
        await web.SockSite(self._runner, listener).start()
        self.port = int(listener.getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        await self._runner.cleanup()


def _listener(port: int) -> socket.socket:
    """A listening socket on every interface: IPv6 and IPv4 on one socket where the machine has IPv6.

    One socket, so that port 0 gives one port (two sockets would each get their own).
    """
    if socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            pass  # a kernel without IPv6
        else:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                return _bound(sock, ("::", port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise
                # IPv6 turned off on this machine: IPv4 only.
    return _bound(socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", port))  # noqa: S104 - scraped from other hosts


def _bound(sock: socket.socket, address: tuple[str, int]) -> socket.socket:
    try:
        # A restarted worker takes its port back at once, past the old one's connections in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
