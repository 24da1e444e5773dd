"""The status reads' pieces without a server: the pool size, the shared computation.
Against a real gateway: ``tests/integration/test_surface.py``."""

from __future__ import annotations

import asyncio

import pytest

from gateway.status import POOL_CONNECTIONS, Cached, status_url


def test_status_client_gets_a_small_pool_of_its_own() -> None:
    size = f"max_connections={POOL_CONNECTIONS}"
    assert status_url("redis://h:6379/0") == f"redis://h:6379/0?{size}"
    assert status_url("redis://h/0?max_connections=900&db=1") == f"redis://h/0?db=1&{size}"
    sentinel = "redis+sentinel://s1:26379,s2:26379/mymaster/0"
    assert status_url(sentinel) == sentinel  # a pool of its own, of the usual size


async def test_cached_shares_one_computation_and_keeps_no_failure() -> None:
    calls = 0
    release = asyncio.Event()
    fail = False

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        if fail:
            raise OSError("down")
        return calls

    cached = Cached(compute, ttl=3600)
    waiters = [asyncio.create_task(cached.get()) for _ in range(10)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [1] * 10
    assert calls == 1 and cached.computations == 1
    assert await cached.get() == 1  # fresh: no new computation

    failing = Cached(compute, ttl=3600)
    fail = True
    with pytest.raises(OSError):
        await failing.get()
    fail = False
    assert await failing.get() == 3  # the failure was not kept
    await cached.close()
    await failing.close()
