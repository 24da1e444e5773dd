"""Admission: a new session gets a decoder slot, or status 9.

With ``admission_wait`` 0 (the default, as kaldi-gstreamer-server) a session is
refused at once when the cluster has no free slot for its model; otherwise it waits up
to that long for one. Once enqueued, a worker must claim it within ``claim_timeout``;
if none does, the session is cancelled atomically (a worker claiming it later sees the
cancellation and drops it) and the client gets status 9.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from shared import cluster, sessions
from shared.keys import Keys
from shared.protocol import NoDecoderAvailable
from shared.wire import Claimed, Event, SessionRequest

_POLL_S = 0.2


async def wait_for_slot(redis: Redis, keys: Keys, model: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while await cluster.free_slots(redis, keys, model) <= 0:
        if time.monotonic() >= deadline:
            raise NoDecoderAvailable()
        await asyncio.sleep(_POLL_S)


async def admit(
    redis: Redis,
    keys: Keys,
    request: SessionRequest,
    events: asyncio.Queue[Event],
    *,
    sample_rate: int,
    wait: float,
    claim_timeout: float,
) -> Claimed:
    """Create and enqueue the session; return once a worker has claimed it.

    The caller has subscribed ``events`` to the session's channel already.
    """
    await wait_for_slot(redis, keys, request.model, wait)
    await sessions.create(redis, keys, request, sample_rate)
    await sessions.enqueue(redis, keys, request)
    try:
        async with asyncio.timeout(claim_timeout):
            while True:
                event = await events.get()
                if isinstance(event, Claimed):
                    return event
    except TimeoutError:
        if await sessions.cancel(redis, keys, request.sid):
            await sessions.retire(redis, keys, request.sid, sessions.State.CANCELLED)
            await redis.hincrby(keys.stats, "rejected:no_decoder", 1)
            raise NoDecoderAvailable() from None
        # A worker claimed it in the last instant; its Claimed event is on its way.
        while True:
            event = await events.get()
            if isinstance(event, Claimed):
                return event
