"""Admission: a new session gets a decoder slot, or status 9.

With ``admission_wait`` 0 (the default, as kaldi-gstreamer-server) a session is refused
at once when the cluster has no free slot for its model. Otherwise it is enqueued at
once and waits in the sessions stream — where the group's lag counts it, so autoscaling
sees the demand — for up to ``admission_wait`` seconds for a worker to claim it. A
session enqueued while a slot was free gets ``claim_timeout`` for the claim. A session
not claimed in time is cancelled atomically (a worker reaching it later sees the
cancellation and drops it) and the client gets status 9.

With ``--queue-messages`` a websocket session waiting for a slot is told its place in
the queue — ``{"status": 0, "id": …, "queue": {"position": N}}`` — when it changes,
at most once a second. Off by default: strict kaldi-gstreamer-server clients never see
a message the original did not send (its ``client.py`` ignores it anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.hub import EventQueue
from shared import cluster, records
from shared.keys import GROUP, Keys
from shared.protocol import NoDecoderAvailable, UnknownModel
from shared.wire import Claimed, SessionRequest

#: Queue positions are counted among this many waiting entries at most.
MAX_POSITION_SCAN = 1000


async def admit(
    redis: Redis,
    keys: Keys,
    request: SessionRequest,
    events: EventQueue,
    *,
    sample_rate: int,
    wait: float,
    claim_timeout: float,
    on_position: Callable[[int], Awaitable[None]] | None = None,
    report_interval: float = 1.0,
) -> Claimed:
    """Create and enqueue the session; return once a worker has claimed it.

    The caller has subscribed ``events`` to the session's channel already. While the
    session waits because no slot was free, ``on_position`` (if given) is told its
    place in the queue whenever it changes, at most every ``report_interval`` seconds.
    """
    free = await cluster.free_slots(redis, keys, request.model)
    if free <= 0 and wait <= 0:
        raise NoDecoderAvailable()
    await records.create(redis, keys, request, sample_rate)
    await records.enqueue(redis, keys, request)
    report = on_position if free <= 0 else None
    waiter = asyncio.ensure_future(_claimed(events))
    try:
        async with asyncio.timeout(claim_timeout if free > 0 else wait):
            reported = 0
            while report is not None:
                try:
                    position = await queue_position(redis, keys, request)
                except RedisError:  # only informative: the wait goes on
                    position = 0
                if position and position != reported:
                    await report(position)
                    reported = position
                done, _ = await asyncio.wait({waiter}, timeout=report_interval)
                if done:
                    break
            return await asyncio.shield(waiter)
    except TimeoutError:
        if waiter.done() and not waiter.cancelled():
            return waiter.result()
        if await records.cancel(redis, keys, request.sid):
            await records.retire(redis, keys, request.sid, records.State.CANCELLED)
            raise NoDecoderAvailable() from None
        # A worker claimed it in the last instant; its Claimed event is on its way.
        return await waiter
    finally:
        waiter.cancel()


async def queue_position(redis: Redis, keys: Keys, request: SessionRequest) -> int:
    """The session's place among the unclaimed entries of its model's stream (1 =
    next), or 0 when it is not among the first :data:`MAX_POSITION_SCAN`.

    Unclaimed entries are those after the group's last-delivered id; entries of
    sessions that gave up count until a worker skips them, a moment later.
    """
    stream = keys.sessions(request.model)
    last = b"0-0"
    for group in await redis.xinfo_groups(stream):
        name = group.get("name")
        if name in (GROUP, GROUP.encode()):
            last = group.get("last-delivered-id") or last
    start = b"(" + (last if isinstance(last, bytes) else str(last).encode())
    entries = await redis.xrange(stream, min=start, max="+", count=MAX_POSITION_SCAN)
    sid = request.sid.encode()
    for place, (_id, fields) in enumerate(entries, 1):
        if fields.get(b"sid") == sid:
            return place
    return 0


async def choose_model(
    redis: Redis, keys: Keys, model_id: str, *, default: str, allowed: str
) -> cluster.ModelInfo:
    """The model a session asked for, checked against the allow-list.

    The allow-list is the ``models`` setting when it is set (plus the default model),
    otherwise every id a live worker serves (plus the default). An id outside it is
    status 8, so a client can tell "no such model" from "busy" (status 9).

    An allowed id no worker has registered yet (its decoders are scaled to zero, or
    Redis lost the registry) is still a model: its session is enqueued like any other,
    so that the queue's lag can start a decoder, and :func:`admit` decides between
    waiting and status 9 by the free slots. Its audio is prepared at
    :data:`~shared.cluster.MODEL_SAMPLE_RATE`, the only rate a worker decodes.
    """
    if allowed.strip():
        names = {m.strip() for m in allowed.split(",") if m.strip()} | {default}
    else:
        names = await cluster.served_models(redis, keys) | {default}
    if not cluster.MODEL_ID.fullmatch(model_id) or model_id not in names:
        offered = ", ".join(sorted(names))
        raise UnknownModel(f"Unknown model {model_id[:64]!r}; available: {offered}")
    model = await cluster.model(redis, keys, model_id)
    if model is None:
        return cluster.ModelInfo(id=model_id, sample_rate=cluster.MODEL_SAMPLE_RATE)
    return model


async def _claimed(events: EventQueue) -> Claimed:
    while True:
        event = await events.get()
        if isinstance(event, Claimed):
            return event
