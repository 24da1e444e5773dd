"""The gateway's process-wide state: settings, the Redis clients, the event hub.

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
from gateway.queues import QueueKeeper, admitted_models
from gateway.status import ClusterView
from shared import redis_client
from shared.config import GatewaySettings
from shared.keys import Keys
from shared.metrics import GatewayMetrics


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        #: sessions' client: audio writes, records, events
        self.redis: Redis = redis_client.connect(settings.redis_url)
        #: ``/status``, ``/readyz`` and ``/client/ws/status``, on a small pool of their own
        self.view = ClusterView(
            settings.redis_url, self.keys, max_sockets=settings.status_max_sockets
        )
        self.hub = EventHub(self.redis, self.keys)
        #: keeps each admitted model's queue present and its count exact (for KEDA)
        self.queues = QueueKeeper(
            self.redis, self.keys, admitted_models(settings.model, settings.models)
        )
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
        self.queues.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.view.close()
        await self.queues.close()
        await self.hub.close()
        await self.appender.close()
        await self.redis.aclose()


GATEWAY = web.AppKey("gateway", Gateway)
