"""A session's record in Redis, and the atomic steps of its life.

The gateway creates the record (state ``queued``) and enqueues a :class:`SessionRequest`;
a worker claims it (``queued`` -> ``decoding``) with a script, so that a gateway giving
up on a slow claim (``queued`` -> ``cancelled``) and a worker claiming at the same moment
cannot both win. Every script touches the keys of one session only (one hash slot), so
all of this works unchanged in Redis Cluster.

Leases: the owner of a ``decoding`` session renews ``lease_until`` (Redis server time, ms)
every heartbeat, and with it the TTL of the session's keys, so a session lasts as long
as it is decoded (the record of a session nobody renews any more expires). Another
worker may take the session over only once the lease has run out; it then resumes from
the replay point the owner saved with its last final (its fields are defined by
``decoder_worker.replay.ReplayPoint``; this module stores them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from shared.keys import SESSION_TTL_S, Keys
from shared.wire import SessionRequest

#: How a session ends whose record vanished (Redis restarted without its data).
DATA_LOST = "Session data lost: Redis restarted without it"


class State(StrEnum):
    QUEUED = "queued"
    DECODING = "decoding"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Compare-and-set on the ``state`` field of a meta hash; extra fields are set on success.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'state')
if cur ~= ARGV[1] then return cur or false end
redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 3))
return 'ok'
"""


async def create(redis: Redis, keys: Keys, request: SessionRequest, sample_rate: int) -> None:
    """Write the meta record and put the session in the live index (not yet queued)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hset(
        keys.meta(request.sid),
        mapping={
            "state": State.QUEUED.value,
            "model": request.model,
            "created": repr(request.created),
            "audio_bytes": 0,
            "sample_rate": sample_rate,
        },
    )
    pipe.expire(keys.meta(request.sid), SESSION_TTL_S)
    pipe.zadd(keys.live, {request.sid: request.created})
    await pipe.execute()


async def enqueue(redis: Redis, keys: Keys, request: SessionRequest) -> None:
    await redis.xadd(
        keys.sessions(request.model), request.serialize(), maxlen=100_000, approximate=True
    )


async def transition(
    redis: Redis, keys: Keys, sid: str, frm: State, to: State, **fields: Any
) -> bool:
    """Atomically move ``sid`` from state ``frm`` to ``to``; False if it was not in ``frm``."""
    args: list[Any] = [frm.value, to.value]
    for name, value in fields.items():
        args += [name, value]
    result = await redis.eval(_TRANSITION, 1, keys.meta(sid), *args)
    return bool(result == b"ok")


# Claim a queued session, or take over a decoding one whose lease ran out.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ = string.format('%.0f', now + tonumber(ARGV[2]))
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'decoding', 'owner', ARGV[1], 'lease_until', until_,
             'claimed', string.format('%.0f', now))
  return 'new'
end
if state == 'decoding' then
  local owner = redis.call('HGET', KEYS[1], 'owner')
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if owner == ARGV[1] or lease < now then
    redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_until', until_)
    redis.call('HINCRBY', KEYS[1], 'takeovers', 1)
    return 'resume'
  end
  return 'busy'
end
return state or 'missing'
"""

# Extend the lease if we still own the session; release it (lease_until 0) on request.
# Either way the session's keys live another SESSION_TTL_S: a session may last hours.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HGET', KEYS[1], 'state') ~= 'decoding' then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local until_ = '0'
if tonumber(ARGV[2]) > 0 then until_ = string.format('%.0f', now + tonumber(ARGV[2])) end
redis.call('HSET', KEYS[1], 'lease_until', until_)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
"""


class Claim(StrEnum):
    NEW = "new"  # a fresh session: decode from the start
    RESUME = "resume"  # taken over (or retried): decode from the saved replay point
    BUSY = "busy"  # its owner's lease is still running: leave it


async def claim(redis: Redis, keys: Keys, sid: str, worker_id: str, lease: float) -> Claim | None:
    """Claim or take over ``sid``; None when it has ended (or was cancelled) already."""
    result = await redis.eval(_CLAIM, 1, keys.meta(sid), worker_id, int(lease * 1000))
    text = result.decode() if isinstance(result, bytes) else str(result)
    return Claim(text) if text in Claim._value2member_map_ else None


async def renew(redis: Redis, keys: Keys, sid: str, worker_id: str, lease: float) -> bool:
    """Extend our lease on ``sid`` (``lease`` 0 releases it) and the life of its keys;
    False if we lost it."""
    session_keys = (keys.meta(sid), keys.audio(sid), keys.results(sid))
    return bool(
        await redis.eval(_RENEW, 3, *session_keys, worker_id, int(lease * 1000), SESSION_TTL_S)
    )


async def cancel(redis: Redis, keys: Keys, sid: str) -> bool:
    return await transition(redis, keys, sid, State.QUEUED, State.CANCELLED)


async def retire(redis: Redis, keys: Keys, sid: str, state: State) -> None:
    """Final bookkeeping: set the end state, let the keys expire, leave the live index."""
    pipe = redis.pipeline(transaction=False)
    pipe.hset(keys.meta(sid), mapping={"state": state.value, "ended": repr(time.time())})
    for key in keys.session_keys(sid):
        pipe.expire(key, SESSION_TTL_S)
    pipe.zrem(keys.live, sid)
    await pipe.execute()


# The owner's writes are fenced: they happen only while it still owns the session, so a
# worker that was cut off and comes back cannot overwrite what its successor did.
_SAVE_FINALS = """
if redis.call('HGET', KEYS[1], 'state') ~= 'decoding' then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[2])
for i = 1, n do redis.call('XADD', KEYS[2], '*', 'event', ARGV[2 + i]) end
local trim = ARGV[3 + n]
redis.call('HSET', KEYS[1], unpack(ARGV, 4 + n))
if trim ~= '' then redis.call('XTRIM', KEYS[3], 'MINID', trim) end
return 1
"""

_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'decoding' then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'ended', ARGV[3], 'decoder_cpu', ARGV[4])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return 1
"""


async def save_finals(
    redis: Redis,
    keys: Keys,
    sid: str,
    worker_id: str,
    finals: list[bytes],
    replay: Mapping[str, str | int],
    trim_before: str,
) -> bool:
    """Store serialized finals and the new replay point (``replay``: the record fields
    that hold it, at least one), and trim the audio stream before ``trim_before`` (an
    entry id, or ``""``), atomically and only while ``worker_id`` owns the session.
    False: the session is no longer ours."""
    pairs = [item for name, value in replay.items() for item in (name, value)]
    args = [worker_id, len(finals), *finals, trim_before, *pairs]
    session_keys = (keys.meta(sid), keys.results(sid), keys.audio(sid))
    return bool(await redis.eval(_SAVE_FINALS, 3, *session_keys, *args))


async def finish(
    redis: Redis, keys: Keys, sid: str, worker_id: str, state: State, decoder_cpu: float
) -> bool:
    """End a session we own (``decoding`` -> ``state``) and let its keys expire.
    False: it is no longer ours (taken over, or ended already)."""
    owned = await redis.eval(
        _FINISH,
        3,
        keys.meta(sid),
        keys.audio(sid),
        keys.results(sid),
        worker_id,
        state.value,
        repr(time.time()),
        round(decoder_cpu, 3),
        SESSION_TTL_S,
    )
    if owned:
        await redis.zrem(keys.live, sid)
    return bool(owned)
