"""Admission: a new session gets a decoder slot, or status 9.

With ``admission_wait`` 0 (the default, as kaldi-gstreamer-server) a session is refused
at once when the cluster has no free slot for its model. Otherwise it is enqueued at
once and waits in the sessions stream — where the group's lag counts it, so autoscaling
sees the demand — for up to ``admission_wait`` seconds for a worker to claim it. A
session enqueued while a slot was free gets ``claim_timeout`` for the claim. A session
not claimed in time is cancelled atomically (a worker reaching it later sees the
cancellation and drops it) and the client gets status 9.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from shared import cluster, sessions
from shared.keys import Keys
from shared.protocol import NoDecoderAvailable
from shared.wire import Claimed, Event, SessionRequest


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
    free = await cluster.free_slots(redis, keys, request.model)
    if free <= 0 and wait <= 0:
        raise NoDecoderAvailable()
    await sessions.create(redis, keys, request, sample_rate)
    await sessions.enqueue(redis, keys, request)
    try:
        async with asyncio.timeout(claim_timeout if free > 0 else wait):
            return await _claimed(events)
    except TimeoutError:
        if await sessions.cancel(redis, keys, request.sid):
            await sessions.retire(redis, keys, request.sid, sessions.State.CANCELLED)
            raise NoDecoderAvailable() from None
        # A worker claimed it in the last instant; its Claimed event is on its way.
        return await _claimed(events)


async def _claimed(events: asyncio.Queue[Event]) -> Claimed:
    while True:
        event = await events.get()
        if isinstance(event, Claimed):
            return event
