"""Per-key limits, counted in Redis so that they hold across every gateway replica.

**Concurrent sessions**: a sorted set per key name, one member per live session scored
by an expiry time (Redis server time, ms). Taking a place is one script that first
drops expired members, then counts; the runner refreshes its member's expiry every
:data:`REFRESH_S` while the session lives and removes it when the session ends. A
gateway that dies leaves its members behind only until they expire (:data:`LEASE_S`),
so a crash never locks a key out for longer than that.

**Audio seconds per period**: a counter per key name and fixed window
(``floor(time / period)``), incremented as audio goes onto the stream and expiring
with its window. A session is refused at the start when the window's budget is used up
and ended (same status) when it runs out mid-session. Windows follow the gateways'
clocks, which NTP keeps within far less than a period.

Both refusals raise :class:`~shared.protocol.LimitExceeded`: status 6 on a websocket,
HTTP 429 with ``Retry-After`` on HTTP.
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis

from gateway.auth import Principal
from shared.keys import Keys
from shared.protocol import LimitExceeded

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
            window, left = self._window()
            used = float(await self.redis.get(self.keys.key_audio(p.name, window)) or 0)
            if used >= p.audio_seconds:
                raise LimitExceeded(
                    f"Limit exceeded: {p.name!r} used its {p.audio_seconds:g} audio seconds "
                    f"for this period",
                    left,
                )
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

    async def account(self, seconds: float) -> None:
        """Count audio against the period's budget; raise once it is used up."""
        p = self.principal
        if p.audio_seconds <= 0 or seconds <= 0:
            return
        window, left = self._window()
        key = self.keys.key_audio(p.name, window)
        pipe = self.redis.pipeline(transaction=False)
        pipe.incrbyfloat(key, seconds)
        pipe.expire(key, 2 * self.period)
        used, _ = await pipe.execute()
        if float(used) > p.audio_seconds:
            raise LimitExceeded(
                f"Limit exceeded: {p.name!r} used its {p.audio_seconds:g} audio seconds "
                f"for this period",
                left,
            )
