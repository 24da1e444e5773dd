"""The gateway's process-wide state: settings, the Redis client, the event hub.

It holds the sockets of connected clients only; everything about a session that
another replica would need lives in Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web
from redis.asyncio import Redis

from gateway.hub import EventHub
from shared import cluster
from shared.config import GatewaySettings
from shared.keys import Keys
from shared.protocol import ClusterStatus


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.redis: Redis = Redis.from_url(settings.redis_url)
        self.hub = EventHub(self.redis, self.keys)
        self.sessions: set[str] = set()
        self.ready = False

    @contextmanager
    def track(self, sid: str) -> Iterator[None]:
        self.sessions.add(sid)
        try:
            yield
        finally:
            self.sessions.discard(sid)

    async def start(self) -> None:
        await self.hub.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await self.hub.close()
        await self.redis.aclose()

    async def cluster_status(self) -> ClusterStatus:
        workers = await cluster.workers(self.redis, self.keys)
        return ClusterStatus(
            num_workers_available=sum(w.slots_free for w in workers),
            num_requests_processed=await cluster.requests_processed(self.redis, self.keys),
        )


GATEWAY = web.AppKey("gateway", Gateway)
