"""Workers' heartbeats and the sessions queue through real Redis: written by one side,
read by the other."""

from __future__ import annotations

import time
from dataclasses import replace

from redis.asyncio import Redis

from shared import cluster, records
from shared.keys import GROUP, SESSION_TTL_S, WORKER_LIVE_S, WORKER_TTL_S, Keys
from shared.wire import SessionRequest

KEYS = Keys("hbtest")


def _beat(slots_free: int, models: tuple[str, ...] = ("ko",)) -> cluster.Heartbeat:
    return cluster.Heartbeat(
        host="host-a",
        pid=1234,
        slots_total=4,
        slots_free=slots_free,
        models=models,
        version="9.9",
    )


async def _age(redis: Redis, worker_id: str, seconds: float) -> None:
    """Make a worker's last beat ``seconds`` old, as a worker that stopped beating."""
    at = await cluster.server_time(redis) - seconds
    await redis.hset(KEYS.worker(worker_id), "heartbeat", repr(at))
    await redis.zadd(KEYS.workers, {worker_id: at})


async def test_a_heartbeat_reads_back_as_written(redis: Redis) -> None:
    await cluster.beat(redis, KEYS, "w1", _beat(3, ("ko", "ko-fast")), sample_rate=8000)
    (worker,) = await cluster.workers(redis, KEYS)
    assert (worker.id, worker.host, worker.pid) == ("w1", "host-a", 1234)
    assert (worker.slots_total, worker.slots_free) == (4, 3)
    assert worker.models == ("ko", "ko-fast") and worker.version == "9.9"
    assert 0 <= worker.heartbeat_age < 5
    assert 0 < await redis.ttl(KEYS.worker("w1")) <= WORKER_TTL_S
    for model_id in ("ko", "ko-fast"):
        info = await cluster.model(redis, KEYS, model_id)
        assert info is not None and info.sample_rate == 8000
    parsed = cluster.Heartbeat.parse(await redis.hgetall(KEYS.worker("w1")))
    assert abs(parsed.at - await cluster.server_time(redis)) < WORKER_LIVE_S
    assert replace(parsed, at=0.0) == _beat(3, ("ko", "ko-fast"))


async def test_stale_and_departed_workers_are_not_listed(redis: Redis) -> None:
    for wid, free in (("expired", 4), ("silent", 4), ("gone", 4), ("live", 2)):
        await cluster.beat(redis, KEYS, wid, _beat(free), 16000)
    await _age(redis, "expired", WORKER_TTL_S + 1)
    # Silent for longer than WORKER_LIVE_S, its record not expired yet: as the workers of
    # a cluster stopped with Ctrl-C look to a restarted, persisted Redis.
    await _age(redis, "silent", WORKER_LIVE_S + 1)
    await cluster.leave(redis, KEYS, "gone")
    assert [w.id for w in await cluster.workers(redis, KEYS)] == ["live"]
    assert not await redis.exists(KEYS.worker("gone"))
    assert await redis.exists(KEYS.worker("silent")), "kept until its TTL, for ksc status"
    assert await cluster.free_slots(redis, KEYS, "ko") == 2


async def test_a_heartbeat_is_aged_by_redis_time_not_the_writers_clock(redis: Redis) -> None:
    """A worker whose clock runs an hour behind still counts as live."""
    await cluster.beat(redis, KEYS, "skewed", replace(_beat(1), at=time.time() - 3600), 16000)
    (worker,) = await cluster.workers(redis, KEYS)
    assert worker.id == "skewed" and 0 <= worker.heartbeat_age < WORKER_LIVE_S


async def _waiting_stream(redis: Redis, model: str, added: int, read: int) -> str:
    stream = KEYS.sessions(model)
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for i in range(added):
        await redis.xadd(stream, {"sid": f"s{i}"})
    if read:
        await redis.xreadgroup(GROUP, "w", {stream: ">"}, count=read)
    return stream


async def _lag(redis: Redis, stream: str) -> int | None:
    (group,) = await redis.xinfo_groups(stream)
    return group["lag"]


async def test_queued_counts_exactly_and_repairs_a_wrong_lag(redis: Redis) -> None:
    """The outage of issue 12: lag 88 while nothing waited refused every session."""
    stream = await _waiting_stream(redis, "lagko", added=12, read=9)
    assert await cluster.queued(redis, KEYS, "lagko") == 3
    # Redis's lag is an estimate: make it wrong as an AOF reload can.
    (group,) = await redis.xinfo_groups(stream)
    last = group["last-delivered-id"]
    await redis.execute_command("XGROUP", "SETID", stream, GROUP, last, "ENTRIESREAD", 1)
    assert await _lag(redis, stream) == 11
    await cluster.beat(redis, KEYS, "w-lag", _beat(4, ("lagko",)), 16000)
    assert await cluster.free_slots(redis, KEYS, "lagko") == 4 - 3
    assert await _lag(redis, stream) == 3, "repaired for KEDA's lagCount trigger"
    await redis.xreadgroup(GROUP, "w", {stream: ">"}, count=10)
    assert await cluster.queued(redis, KEYS, "lagko") == 0
    assert await _lag(redis, stream) == 0


async def test_queued_without_a_stream_or_group_is_zero(redis: Redis) -> None:
    assert await cluster.queued(redis, KEYS, "nosuchmodel") == 0
    await redis.xadd(KEYS.sessions("nogroup"), {"sid": "x"})
    assert await cluster.queued(redis, KEYS, "nogroup") == 0


async def test_a_lease_renewal_keeps_a_long_session_alive(redis: Redis) -> None:
    """Issue 12: the record of a session decoded for more than SESSION_TTL_S vanished."""
    request = SessionRequest(sid="long-session", model="ko", created=time.time())
    await records.create(redis, KEYS, request, 16000)
    assert await records.claim(redis, KEYS, request.sid, "w1", lease=5) == records.Claim.NEW
    await redis.xadd(KEYS.audio(request.sid), {"x": "1"})
    await redis.xadd(KEYS.results(request.sid), {"x": "1"})
    for key in KEYS.session_keys(request.sid):
        await redis.expire(key, 3)  # as if SESSION_TTL_S had nearly run out
    assert await records.renew(redis, KEYS, request.sid, "w1", lease=5)
    for key in KEYS.session_keys(request.sid):
        assert await redis.ttl(key) > SESSION_TTL_S - 5, key
    assert not await records.renew(redis, KEYS, request.sid, "w2", lease=5), "not the owner"
