"""A gateway keeps its models' queues: present, and countable, with no worker running."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from gateway.app import serve
from shared.config import GatewaySettings
from shared.keys import GROUP, Keys


async def _lag(redis: Redis, stream: str) -> int | None:
    groups = await redis.xinfo_groups(stream)
    return groups[0]["lag"] if groups else None


async def test_a_gateway_creates_the_group_and_keeps_the_lag_exact(redis_server: str) -> None:
    """KEDA's trigger errors NOGROUP, and cannot scale from zero, when Redis lost the
    group and no worker has started; and it reads a lag that Redis may have wrong."""
    prefix = f"queues-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    url = f"{redis_server}/0"
    settings = GatewaySettings(
        redis_url=url, prefix=prefix, host="127.0.0.1", port=0, model="ko", models="ko,ko-b"
    )
    redis = Redis.from_url(url)
    try:
        async with serve(settings) as (gateway, _port):
            for model in ("ko", "ko-b"):
                async with asyncio.timeout(10):
                    while not await redis.exists(keys.sessions(model)):
                        await asyncio.sleep(0.05)
                assert await _lag(redis, keys.sessions(model)) == 0
            stream = keys.sessions("ko")
            for i in range(3):
                await redis.xadd(stream, {"sid": f"s{i}"})
            (group,) = await redis.xinfo_groups(stream)
            last = group["last-delivered-id"]
            await redis.execute_command("XGROUP", "SETID", stream, GROUP, last, "ENTRIESREAD", 0)
            await redis.execute_command("XGROUP", "SETID", stream, GROUP, last)  # lag unknown
            assert await gateway.queues.keep_once() == {"ko": 3, "ko-b": 0}
            assert await _lag(redis, stream) == 3
    finally:
        await redis.delete(keys.sessions("ko"), keys.sessions("ko-b"))
        await redis.aclose()
