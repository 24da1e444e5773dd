"""One pub/sub connection per gateway, fanned out to the sessions it serves.

A session subscribes to its events channel before its request is enqueued, and
:meth:`EventHub.subscribe` returns only once Redis has confirmed the subscription, so
no event a worker publishes can be missed.

Redis going away: the reader backs off and reads again; redis-py then reconnects and
subscribes every channel again (we see a second confirmation of the placeholder
channel). Events published while we were disconnected are gone, so the hub then
reconciles each session it serves with its record in Redis: a session claimed or
finished in the meantime gets a :class:`Claimed` or :class:`Done` (both make the
session read the results stream for finals it missed), one whose record is gone
(Redis restarted without its data) a :class:`Failed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from contextlib import suppress

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from shared import records
from shared.keys import Keys
from shared.protocol import Status
from shared.redis_client import backoff
from shared.tasks import stop_tasks
from shared.wire import (
    Claimed,
    Done,
    Event,
    Failed,
    PartialResult,
    Progress,
    WireError,
    parse_event,
)

log = logging.getLogger(__name__)
#: How long a new session waits for Redis to confirm its subscription.
_SUBSCRIBE_TIMEOUT_S = 30.0
#: An unconfirmed subscription is sent again after this long.
_RESUBSCRIBE_S = 2.0


class EventQueue:
    """A session's events on their way to its client, bounded whatever the client does.

    Finals and the events that end or move a session are kept in order. Of partial
    results and progress reports only the newest waits: a client that reads slowly (or
    not at all, while it keeps sending audio) has no use for stale partials, and the
    queue then holds at most one of each besides the finals, which the results stream
    bounds anyway.
    """

    _LATEST_ONLY = (PartialResult, Progress)

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, event: Event) -> None:
        if isinstance(event, self._LATEST_ONLY):
            kind = type(event)
            if any(type(item) is kind for item in self._items):
                self._items = deque(item for item in self._items if type(item) is not kind)
        self._items.append(event)
        self._ready.set()

    async def get(self) -> Event:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class EventHub:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._pubsub: PubSub | None = None
        self._queues: dict[str, EventQueue] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._reconcile: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._placeholder = keys.prefix + ":hub"
        self._connections = 0
        #: False from a failed read until the next confirmed (re)subscription.
        self.connected = False

    @property
    def reconnects(self) -> int:
        """Times the pub/sub connection came back after a failure (for tests and logs)."""
        return max(0, self._connections - 1)

    async def start(self) -> None:
        # A Cluster client learns the slot map on its first command; its pub/sub picks a
        # node by slot, so it needs the map before subscribing.
        await self._redis.ping()
        self._pubsub = self._redis.pubsub()
        # A placeholder subscription keeps the connection in pub/sub mode while idle, and
        # its confirmation arriving again tells the reader that the connection was renewed.
        await self._pubsub.subscribe(self._placeholder)
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def close(self) -> None:
        await stop_tasks(self._task, self._reconcile)
        self._task = self._reconcile = None
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    async def subscribe(self, sid: str) -> EventQueue:
        assert self._pubsub is not None, "hub not started"
        channel = self._keys.events(sid)
        queue = EventQueue()
        confirmed = asyncio.Event()
        self._queues[sid] = queue
        self._confirmed[channel] = confirmed
        try:
            async with asyncio.timeout(_SUBSCRIBE_TIMEOUT_S):
                # Sent again while unconfirmed: a SUBSCRIBE written just before the
                # connection was renewed can be lost with it (Redis restarting).
                while True:
                    async with self._lock:
                        await self._pubsub.subscribe(channel)
                    with suppress(TimeoutError):
                        async with asyncio.timeout(_RESUBSCRIBE_S):
                            await confirmed.wait()
                    if confirmed.is_set():
                        break
        except TimeoutError:
            self._forget(sid)
            message = f"Redis did not confirm the subscription to {channel}"
            raise RedisConnectionError(message) from None
        except BaseException:
            self._forget(sid)
            raise
        return queue

    def _forget(self, sid: str) -> None:
        self._queues.pop(sid, None)
        self._confirmed.pop(self._keys.events(sid), None)

    async def unsubscribe(self, sid: str) -> None:
        if self._queues.pop(sid, None) is None or self._pubsub is None:
            return
        # Redis being down must not keep a finished session from ending: once we are
        # reconnected, redis-py resubscribes only what is still in its channel list.
        with suppress(RedisError, OSError):
            async with self._lock:
                await self._pubsub.unsubscribe(self._keys.events(sid))

    async def _run(self) -> None:
        assert self._pubsub is not None
        failures = 0
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                # redis-py gave up retrying: wait, then the next read reconnects.
                failures += 1
                if self.connected or failures == 1:
                    log.warning("event hub lost Redis (%s); reconnecting", exc)
                self.connected = False
                await asyncio.sleep(backoff(failures))
                continue
            failures = 0
            if message is None:
                continue
            channel = message["channel"].decode()
            if message["type"] == "subscribe":
                confirmed = self._confirmed.pop(channel, None)
                if confirmed is not None:
                    confirmed.set()
                if channel == self._placeholder:
                    self._on_connected()
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

    def _on_connected(self) -> None:
        self.connected = True
        self._connections += 1
        if self._connections == 1:
            return
        log.info("event hub reconnected to Redis; reconciling %d sessions", len(self._queues))
        if self._reconcile is not None:
            self._reconcile.cancel()
        self._reconcile = asyncio.create_task(self._reconcile_all(), name="event-hub-reconcile")

    async def _reconcile_all(self) -> None:
        """Events published while we were away are lost: ask Redis where each session is."""
        failures = 0
        pending = set(self._queues)
        while pending:
            try:
                for sid in sorted(pending):
                    event = await self._state_event(sid)
                    queue = self._queues.get(sid)
                    if event is not None and queue is not None:
                        queue.put_nowait(event)
                    pending.discard(sid)
            except (RedisError, OSError) as exc:
                failures += 1
                log.warning("reconciling sessions after a reconnect failed: %s", exc)
                await asyncio.sleep(backoff(failures))

    async def _state_event(self, sid: str) -> Event | None:
        """The event that brings a session's client up to date with its record."""
        meta = await self._redis.hgetall(self._keys.meta(sid))
        state = meta.get(b"state", b"").decode()
        if not state:  # the record is gone (or recreated by a late audio counter)
            return Failed(int(Status.ABORTED), records.DATA_LOST)
        if state == "decoding":
            return Claimed(worker=meta.get(b"owner", b"").decode())
        if state == "done":
            return Done(segments=int(meta.get(b"next_segment", b"0")), total=0.0)
        if state == "failed":
            return Failed(int(Status.ABORTED), "Session failed while Redis was unreachable")
        return None  # queued: nothing happened yet; cancelled: the gateway did it
