"""The cluster's state as a gateway serves it: ``/client/ws/status``, ``/status``, ``/readyz``.

These are read far more often than the cluster changes, by anyone who can reach the
port (``/readyz``) or holds a key, and they used to cost Redis round trips per request
— per socket and second for ``/client/ws/status``, one ``HGETALL`` per live session for
``/status`` — on the same connection pool as the audio writes. Here:

* they read through a client of their own with a small pool (:data:`POOL_CONNECTIONS`
  for a single Redis server), so however many status requests arrive they queue for
  those few connections and never for the audio path's;
* each value is computed at most once per :data:`STATUS_INTERVAL_S` and every caller
  wanting it meanwhile shares that one computation (:class:`Cached`);
* every ``/client/ws/status`` socket of the process is fed by one poller
  (:class:`StatusFeed`), whatever their number; the number is capped
  (``status_max_sockets``, 503 above it);
* ``/status`` lists at most :data:`~shared.cluster.MAX_SESSIONS_LISTED` sessions
  (``sessions_total`` says how many there are), read in two pipelined round trips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSCloseCode, web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import cluster, redis_client
from shared.cluster import MAX_SESSIONS_LISTED, WorkerInfo
from shared.keys import Keys
from shared.protocol import ClusterStatus
from shared.tasks import stop_tasks

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often the status is recomputed: the feed's poll interval and the caches' age.
STATUS_INTERVAL_S = 1.0
#: Connections of the status client's pool (a single Redis server; Sentinel and
#: Cluster clients get a pool of their own of the usual size).
POOL_CONNECTIONS = 4


def status_url(url: str) -> str:
    """``url`` with the status client's pool size, for a single Redis server."""
    if redis_client.parse_url(url).kind != "standalone":
        return url
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    options = [(k, v) for k, v in pairs if k != "max_connections"]
    options.append(("max_connections", str(POOL_CONNECTIONS)))
    return f"{base}?{urlencode(options)}"


class Cached(Generic[T]):
    """A value at most ``ttl`` seconds old; concurrent callers share one computation.

    A failed computation is not kept: each of its waiters gets the exception, and the
    next caller tries again.
    """

    def __init__(self, compute: Callable[[], Awaitable[T]], ttl: float) -> None:
        self._compute = compute
        self.ttl = ttl
        self._value: T | None = None
        self._at: float | None = None
        self._task: asyncio.Task[T] | None = None
        #: computations started (for tests and curiosity)
        self.computations = 0

    async def get(self) -> T:
        now = asyncio.get_running_loop().time()
        if self._at is not None and now - self._at < self.ttl:
            return self._value  # type: ignore[return-value]
        if self._task is None:
            self.computations += 1
            self._task = asyncio.create_task(self._refresh())
            # Retrieved here too: every waiter may have been cancelled meanwhile.
            self._task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._task)

    async def _refresh(self) -> T:
        try:
            value = await self._compute()
        finally:
            self._task = None
        self._value = value
        self._at = asyncio.get_running_loop().time()
        return value

    async def close(self) -> None:
        await stop_tasks(self._task)


class StatusFeed:
    """The ``/client/ws/status`` message of this process, recomputed every ``interval``
    by one poller while at least one socket listens, then handed to all of them."""

    def __init__(
        self, compute: Callable[[], Awaitable[str]], interval: float, max_sockets: int
    ) -> None:
        self._compute = compute
        self.interval = interval
        self.max_sockets = max_sockets
        self.sockets: set[web.WebSocketResponse] = set()
        #: the latest message, ``None`` until the poller has one
        self.text: str | None = None
        #: incremented with every new message
        self.version = 0
        self._changed = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        #: status computations so far (one per interval, whatever the sockets' number)
        self.polls = 0

    def join(self, ws: web.WebSocketResponse) -> bool:
        """Count a socket in; ``False`` when the gateway has its maximum already."""
        if self.max_sockets > 0 and len(self.sockets) >= self.max_sockets:
            return False
        self.sockets.add(ws)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())
        return True

    def leave(self, ws: web.WebSocketResponse) -> None:
        self.sockets.discard(ws)  # the poller stops at its next round

    async def next(self, seen: int) -> tuple[int, str]:
        """The first message newer than version ``seen`` (waits for it)."""
        while self.version <= seen or self.text is None:
            changed = self._changed
            await changed.wait()
        return self.version, self.text

    async def _poll(self) -> None:
        try:
            while self.sockets:
                self.polls += 1
                try:
                    text = await self._compute()
                except (RedisError, OSError) as exc:  # Redis down: keep the last message
                    log.debug("status: %s", exc)
                else:
                    if text != self.text:
                        self.text = text
                        self.version += 1
                        changed, self._changed = self._changed, asyncio.Event()
                        changed.set()
                await asyncio.sleep(self.interval)
        finally:
            self._poller = None
            self.text = None  # a socket joining later waits for a fresh one

    async def close(self) -> None:
        """Close every socket (service restart) and stop the poller."""
        await asyncio.gather(
            *(
                ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"gateway restarting")
                for ws in list(self.sockets)
                if not ws.closed
            )
        )
        await stop_tasks(self._poller)


class ClusterView:
    """What this gateway tells about the cluster, read through its own Redis client."""

    def __init__(self, url: str, keys: Keys, *, max_sockets: int) -> None:
        self.redis: Redis = redis_client.connect(status_url(url))
        self.keys = keys
        self.workers: Cached[list[WorkerInfo]] = Cached(
            lambda: cluster.workers(self.redis, keys), STATUS_INTERVAL_S
        )
        self.snapshot: Cached[dict[str, Any]] = Cached(self._snapshot, STATUS_INTERVAL_S)
        self.feed = StatusFeed(self._status_text, STATUS_INTERVAL_S, max_sockets)
        #: the last readiness failure logged (logged again only when it changes)
        self.unready: str | None = None

    async def _status_text(self) -> str:
        workers = await self.workers.get()
        status = ClusterStatus(
            num_workers_available=sum(w.slots_free for w in workers),
            num_requests_processed=await cluster.requests_processed(self.redis, self.keys),
        )
        return status.serialize()

    async def _snapshot(self) -> dict[str, Any]:
        """The ``ksc status --json`` shape (:func:`shared.cluster.snapshot`)."""
        workers = await self.workers.get()
        sessions = await cluster.sessions(self.redis, self.keys, MAX_SESSIONS_LISTED)
        return {
            "workers": [asdict(w) for w in workers],
            "sessions": [asdict(s) for s in sessions],
            "sessions_total": int(await self.redis.zcard(self.keys.live)),
            "requests_processed": await cluster.requests_processed(self.redis, self.keys),
        }

    async def close(self) -> None:
        await self.feed.close()
        await self.workers.close()
        await self.snapshot.close()
        await self.redis.aclose()
