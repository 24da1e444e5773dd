"""The gateway's appender: many sessions' commands share pipelines, each gets its own
replies and errors (real Redis)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.appender import Appender
from harness.cluster import free_port


async def _connections(redis: Redis, name: str) -> int:
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("name") == name)


async def test_concurrent_sessions_share_one_connection(redis: Redis, redis_server: str) -> None:
    client = Redis.from_url(f"{redis_server}/1?client_name=appender-test")
    appender = Appender(client)
    try:

        async def session(n: int) -> list[list[object]]:
            replies = []
            for k in range(5):
                replies.append(
                    await appender.run(
                        [("xadd", (f"audio:{n}", {"k": k})), ("hincrby", (f"meta:{n}", "n", 1))]
                    )
                )
            return replies

        results = await asyncio.gather(*(session(n) for n in range(200)))
        assert await _connections(redis, "appender-test") == 1
    finally:
        await appender.close()
        await client.aclose()
    for n, replies in enumerate(results):
        assert [r[1] for r in replies] == [1, 2, 3, 4, 5]  # its own counter, in order
        entries = await redis.xrange(f"audio:{n}")
        assert [e[1][b"k"] for e in entries] == [b"0", b"1", b"2", b"3", b"4"]
        assert [e[0] for e in entries] == [r[0] for r in replies]


async def test_a_failed_command_fails_only_its_session(redis: Redis) -> None:
    await redis.set("not-a-stream", "x")
    appender = Appender(redis)
    try:
        bad = appender.run([("xadd", ("not-a-stream", {"a": 1}))])
        good = appender.run([("xadd", ("a-stream", {"a": 1}))])
        outcomes = await asyncio.gather(bad, good, return_exceptions=True)
    finally:
        await appender.close()
    assert isinstance(outcomes[0], ResponseError) and "WRONGTYPE" in str(outcomes[0])
    assert isinstance(outcomes[1], list) and await redis.xlen("a-stream") == 1


async def test_a_lost_connection_fails_every_waiting_session() -> None:
    nobody = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    appender = Appender(nobody)
    try:
        outcomes = await asyncio.gather(
            *(appender.run([("xadd", (f"s{n}", {"a": 1}))]) for n in range(3)),
            return_exceptions=True,
        )
    finally:
        await appender.close()
        await nobody.aclose()
    assert all(isinstance(o, RedisConnectionError) for o in outcomes), outcomes


async def test_a_cancelled_session_leaves_the_others_their_replies(redis: Redis) -> None:
    appender = Appender(redis)
    try:
        gone = asyncio.create_task(appender.run([("xadd", ("gone", {"a": 1}))]))
        stays = asyncio.create_task(appender.run([("xadd", ("stays", {"a": 1}))]))
        await asyncio.sleep(0)  # both queued
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert len(await stays) == 1
        assert len(await appender.run([("xlen", ("stays",))])) == 1  # still sending
    finally:
        await appender.close()
