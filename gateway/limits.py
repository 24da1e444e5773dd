"""Per-key limits, counted in Redis so that they hold across every gateway replica.

**Concurrent sessions**: a sorted set per key name, one member per live session scored
by an expiry time (Redis server time, ms). Taking a place is one script that first
drops expired members, then counts; the runner refreshes its member's expiry every
:data:`REFRESH_S` while the session lives and removes it when the session ends. A
gateway that dies leaves its members behind only until they expire (:data:`LEASE_S`),
so a crash never locks a key out for longer than that.

**Audio seconds per period**: a counter per key name and fixed window
(``floor(time / period)``), expiring with its window. Audio is charged *before* it
goes onto the stream (:meth:`KeyLimits.charge`, one script: what is left of the
budget is granted and counted, never more), so a huge piece of audio is refused, not
written and counted afterwards. A session is refused at the start when the window's
budget is used up and ended (same status) when it runs out mid-session. Windows follow
the gateways' clocks, which NTP keeps within far less than a period.

A transport may take a session's place before the session starts (the vosk dialect
does at connect, :meth:`KeyLimits.holding`): the runner's own :meth:`KeyLimits.acquire`
with the same session id then finds the place already its own.

Both refusals raise :class:`~shared.protocol.LimitExceeded`: status 6 on a websocket,
HTTP 429 with ``Retry-After`` on HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.auth import PRINCIPAL, Principal
from shared.keys import Keys
from shared.protocol import LimitExceeded
from shared.tasks import stop_tasks

log = logging.getLogger(__name__)

#: A session's place in its key's concurrency set lasts this long without a refresh.
LEASE_S = 30.0
#: How often a live session refreshes its place.
REFRESH_S = 10.0
#: ``Retry-After`` for a key at its concurrency limit.
RETRY_SESSIONS_S = 5

# KEYS[1] the key's zset; ARGV: sid, limit, lease ms. 1 = admitted, 0 = at the limit.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
   and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# KEYS[1] the window's audio counter; ARGV: seconds wanted, budget, ttl s. Grants what
# is left of the budget, at most what is wanted; returns the seconds granted (a string:
# a Lua number would come back truncated to an integer).
_CHARGE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if grant <= 0 then
  return '0'
end
redis.call('INCRBYFLOAT', KEYS[1], tostring(grant))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return tostring(grant)
"""


def for_request(redis: Redis, keys: Keys, period: int) -> KeyLimits | None:
    """The limits of the request's principal (:data:`~gateway.auth.PRINCIPAL`), or
    ``None`` when authentication is off or the principal has no limits."""
    principal = PRINCIPAL.get()
    if principal is None:
        return None
    limits = KeyLimits(redis, keys, principal, period)
    return limits if limits.active else None


class KeyLimits:
    """The limits of one principal, for one session."""

    def __init__(self, redis: Redis, keys: Keys, principal: Principal, period: int) -> None:
        self.redis = redis
        self.keys = keys
        self.principal = principal
        self.period = max(1, period)

    @property
    def active(self) -> bool:
        return self.principal.max_sessions > 0 or self.principal.audio_seconds > 0

    def _window(self) -> tuple[int, int]:
        """This window's number and the seconds until it ends."""
        now = time.time()
        window = int(now // self.period)
        return window, max(1, math.ceil((window + 1) * self.period - now))

    async def acquire(self, sid: str) -> None:
        """Take a session place and check the audio budget; raise when refused."""
        p = self.principal
        if p.audio_seconds > 0:
            window, _ = self._window()
            used = float(await self.redis.get(self.keys.key_audio(p.name, window)) or 0)
            if used >= p.audio_seconds:
                raise self.exceeded()
        if p.max_sessions > 0:
            admitted = await self.redis.eval(
                _ACQUIRE,
                1,
                self.keys.key_sessions(p.name),
                sid,
                p.max_sessions,
                int(LEASE_S * 1000),
            )
            if not admitted:
                raise LimitExceeded(
                    f"Limit exceeded: {p.name!r} has {p.max_sessions} sessions open",
                    RETRY_SESSIONS_S,
                )

    async def refresh(self, sid: str) -> None:
        if self.principal.max_sessions > 0:
            # Same script: the place is ours already, so it is extended, never refused.
            await self.redis.eval(
                _ACQUIRE,
                1,
                self.keys.key_sessions(self.principal.name),
                sid,
                0,
                int(LEASE_S * 1000),
            )

    async def release(self, sid: str) -> None:
        if self.principal.max_sessions > 0:
            await self.redis.zrem(self.keys.key_sessions(self.principal.name), sid)

    @asynccontextmanager
    async def holding(self, sid: str) -> AsyncIterator[None]:
        """Take ``sid``'s place (:meth:`acquire`) and keep it fresh inside the block.

        Leaving the block stops the refreshing but keeps the place: the session that
        follows takes it over with :meth:`acquire`; whoever holds ``sid`` must
        :meth:`release` it in the end.
        """
        await self.acquire(sid)
        keeper = asyncio.create_task(self._keep(sid))
        try:
            yield
        finally:
            await stop_tasks(keeper)

    async def _keep(self, sid: str) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh(sid)
            except (RedisError, OSError) as exc:
                log.warning("key limit refresh: %s", exc)

    async def charge(self, seconds: float) -> float:
        """Count up to ``seconds`` of audio against the period's budget before it is
        written; returns the seconds granted (all of them without a budget). Less than
        asked means the budget is used up: write what was granted, then end the
        session with :meth:`exceeded`."""
        p = self.principal
        if p.audio_seconds <= 0 or seconds <= 0:
            return seconds
        window, _ = self._window()
        granted = await self.redis.eval(
            _CHARGE,
            1,
            self.keys.key_audio(p.name, window),
            repr(seconds),
            repr(float(p.audio_seconds)),
            2 * self.period,
        )
        return float(granted)

    def exceeded(self) -> LimitExceeded:
        """The error that ends a session whose audio budget ran out."""
        p = self.principal
        _, left = self._window()
        return LimitExceeded(
            f"Limit exceeded: {p.name!r} used its {p.audio_seconds:g} audio seconds "
            f"for this period",
            left,
        )
