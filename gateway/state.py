"""The gateway's process-wide state: settings, the Redis client, the event hub.

It holds the sockets of connected clients only; everything about a session that
another replica would need lives in Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import WSCloseCode, web
from redis.asyncio import Redis

from gateway.appender import Appender
from gateway.auth import Authenticator
from gateway.hub import EventHub
from shared import cluster, redis_client
from shared.config import GatewaySettings
from shared.keys import Keys
from shared.metrics import GatewayMetrics
from shared.protocol import ClusterStatus


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.redis: Redis = redis_client.connect(settings.redis_url)
        self.hub = EventHub(self.redis, self.keys)
        self.appender = Appender(self.redis)
        self.sessions: dict[str, web.WebSocketResponse | None] = {}
        self.ready = False
        self.metrics = GatewayMetrics()
        #: ``None`` when authentication is off (see :mod:`gateway.auth`)
        self.auth = Authenticator.from_settings(settings)

    @contextmanager
    def track(self, sid: str, ws: web.WebSocketResponse | None = None) -> Iterator[None]:
        """Count a session as open; ``ws`` is closed by :meth:`close_sessions` on drain."""
        self.sessions[sid] = ws
        self.metrics.sessions_active.inc()
        try:
            yield
        finally:
            self.sessions.pop(sid, None)
            self.metrics.sessions_active.dec()

    async def close_sessions(self) -> None:
        """Drain's last step: tell the clients still connected that we are restarting."""
        await asyncio.gather(
            *(
                ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"gateway restarting")
                for ws in self.sessions.values()
                if ws is not None and not ws.closed
            )
        )

    async def start(self) -> None:
        await self.hub.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.hub.close()
        await self.appender.close()
        await self.redis.aclose()

    async def cluster_status(self) -> ClusterStatus:
        workers = await cluster.workers(self.redis, self.keys)
        return ClusterStatus(
            num_workers_available=sum(w.slots_free for w in workers),
            num_requests_processed=await cluster.requests_processed(self.redis, self.keys),
        )


GATEWAY = web.AppKey("gateway", Gateway)
