"""Workers' heartbeats through real Redis: written by one side, read by the other."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from shared import cluster
from shared.keys import WORKER_TTL_S, Keys

KEYS = Keys("hbtest")


def _beat(slots_free: int, at: float, models: tuple[str, ...] = ("ko",)) -> cluster.Heartbeat:
    return cluster.Heartbeat(
        host="host-a",
        pid=1234,
        slots_total=4,
        slots_free=slots_free,
        models=models,
        version="9.9",
        at=at,
    )


async def test_a_heartbeat_reads_back_as_written(redis: Redis) -> None:
    now = time.time()
    await cluster.beat(redis, KEYS, "w1", _beat(3, now, ("ko", "ko-fast")), sample_rate=8000)
    (worker,) = await cluster.workers(redis, KEYS)
    assert (worker.id, worker.host, worker.pid) == ("w1", "host-a", 1234)
    assert (worker.slots_total, worker.slots_free) == (4, 3)
    assert worker.models == ("ko", "ko-fast") and worker.version == "9.9"
    assert 0 <= worker.heartbeat_age < 5
    assert 0 < await redis.ttl(KEYS.worker("w1")) <= WORKER_TTL_S
    for model_id in ("ko", "ko-fast"):
        info = await cluster.model(redis, KEYS, model_id)
        assert info is not None and info.sample_rate == 8000
    assert cluster.Heartbeat.parse(await redis.hgetall(KEYS.worker("w1"))) == _beat(
        3, now, ("ko", "ko-fast")
    )


async def test_stale_and_departed_workers_are_not_listed(redis: Redis) -> None:
    await cluster.beat(redis, KEYS, "old", _beat(4, time.time() - WORKER_TTL_S - 1), 16000)
    await cluster.beat(redis, KEYS, "gone", _beat(4, time.time()), 16000)
    await cluster.beat(redis, KEYS, "live", _beat(2, time.time()), 16000)
    await cluster.leave(redis, KEYS, "gone")
    assert [w.id for w in await cluster.workers(redis, KEYS)] == ["live"]
    assert not await redis.exists(KEYS.worker("gone"))
    assert await cluster.free_slots(redis, KEYS, "ko") == 2
