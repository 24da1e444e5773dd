"""One pub/sub connection per gateway, fanned out to the sessions it serves.

A session subscribes to its events channel before its request is enqueued, and
:meth:`EventHub.subscribe` returns only once Redis has confirmed the subscription, so
no event a worker publishes can be missed.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from shared.keys import Keys
from shared.wire import Event, WireError, parse_event

log = logging.getLogger(__name__)


class EventHub:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._pubsub: PubSub | None = None
        self._queues: dict[str, asyncio.Queue[Event]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        # A placeholder subscription keeps the connection in pub/sub mode while idle.
        await self._pubsub.subscribe(self._keys.prefix + ":hub")
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    async def subscribe(self, sid: str) -> asyncio.Queue[Event]:
        assert self._pubsub is not None, "hub not started"
        channel = self._keys.events(sid)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        confirmed = asyncio.Event()
        self._queues[sid] = queue
        self._confirmed[channel] = confirmed
        async with self._lock:
            await self._pubsub.subscribe(channel)
        await confirmed.wait()
        return queue

    async def unsubscribe(self, sid: str) -> None:
        if self._queues.pop(sid, None) is None or self._pubsub is None:
            return
        async with self._lock:
            await self._pubsub.unsubscribe(self._keys.events(sid))

    async def _run(self) -> None:
        assert self._pubsub is not None
        while True:
            message = await self._pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            channel = message["channel"].decode()
            if message["type"] == "subscribe":
                confirmed = self._confirmed.pop(channel, None)
                if confirmed is not None:
                    confirmed.set()
                continue
            if message["type"] != "message":
                continue
            try:
                sid = self._keys.sid_from_events(channel)
                event = parse_event(message["data"])
            except (ValueError, WireError):
                log.warning("dropping malformed event on %s", channel)
                continue
            queue = self._queues.get(sid)
            if queue is not None:
                queue.put_nowait(event)
