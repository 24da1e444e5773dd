"""A session's record in Redis, and the atomic steps of its life.

The gateway creates the record (state ``queued``) and enqueues a :class:`SessionRequest`;
a worker claims it (``queued`` -> ``decoding``) with a script, so that a gateway giving
up on a slow claim (``queued`` -> ``cancelled``) and a worker claiming at the same moment
cannot both win. Every script touches the keys of one session only (one hash slot).
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis

from shared.keys import SESSION_TTL_S, Keys
from shared.wire import SessionRequest


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


async def claim(redis: Redis, keys: Keys, sid: str, worker_id: str) -> bool:
    return await transition(
        redis, keys, sid, State.QUEUED, State.DECODING, owner=worker_id, claimed=repr(time.time())
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
