"""Redis URLs: every scheme the Helm chart renders parses to the right client."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from shared.redis_client import RETRIES, RedisTarget, RedisURLError, connect, parse_url


def test_standalone() -> None:
    target = parse_url("redis://127.0.0.1:6380/2")
    assert (target.kind, target.tls, target.hosts, target.db) == (
        "standalone",
        False,
        (("127.0.0.1", 6380),),
        2,
    )
    assert target.password is None


def test_standalone_tls_with_password() -> None:
    target = parse_url("rediss://:s%40cret@redis.example:6379/0")
    assert target.kind == "standalone" and target.tls
    assert target.password == "s@cret" and target.username is None
    assert target.hosts == (("redis.example", 6379),)


def test_standalone_defaults() -> None:
    assert parse_url("redis://localhost") == RedisTarget(
        "standalone", False, (("localhost", 6379),), url="redis://localhost"
    )


def test_sentinel_as_the_chart_renders_it() -> None:
    target = parse_url("redis+sentinel://:pw@s1:26379,s2:26379,s3/mymaster/3")
    assert target.kind == "sentinel" and not target.tls
    assert target.hosts == (("s1", 26379), ("s2", 26379), ("s3", 26379))
    assert (target.master, target.db, target.password) == ("mymaster", 3, "pw")
    assert target.sentinel_password == "pw"


def test_sentinel_without_db_or_password() -> None:
    target = parse_url("redis+sentinel://10.0.0.1:26379/mymaster")
    assert (target.master, target.db, target.password, target.sentinel_password) == (
        "mymaster",
        0,
        None,
        None,
    )


def test_sentinel_password_of_its_own() -> None:
    assert parse_url("redis+sentinel://:pw@s1/m/0?sentinel_password=sp").sentinel_password == "sp"
    assert parse_url("redis+sentinel://:pw@s1/m/0?sentinel_password=").sentinel_password is None


def test_cluster() -> None:
    target = parse_url("rediss+cluster://user:pw@h1:7000,h2:7001,[::1]:7002")
    assert target.kind == "cluster" and target.tls
    assert target.hosts == (("h1", 7000), ("h2", 7001), ("::1", 7002))
    assert (target.username, target.password) == ("user", "pw")
    assert parse_url("redis+cluster://h1:7000/0").db == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://h:1",
        "h1:6379",
        "redis+sentinel://s1:26379",  # no master name
        "redis+sentinel://s1:26379/m/0/extra",
        "redis+sentinel://s1:26379/m/zero",
        "redis+cluster://h1:7000/1",  # cluster has database 0 only
        "redis+cluster://h1:port",
        "redis+cluster://:7000",
    ],
)
def test_rejected(url: str) -> None:
    with pytest.raises(RedisURLError):
        parse_url(url)


async def test_clients_built_without_connecting() -> None:
    """Building a client needs no server; each gets the retry policy."""
    plain = connect("redis://127.0.0.1:1/0")
    assert type(plain) is Redis
    pool_kwargs = plain.connection_pool.connection_kwargs
    assert pool_kwargs["retry"].get_retries() == RETRIES
    assert pool_kwargs["socket_keepalive"] is True
    await plain.aclose()

    sentinel = connect("redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/mymaster/1")
    assert isinstance(sentinel, Redis)
    kwargs = sentinel.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"]) == (1, "pw")
    await sentinel.aclose()

    cluster = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    assert isinstance(cluster, RedisCluster)
    await cluster.aclose()


async def test_more_concurrent_commands_than_redis_pys_default_pool(redis_server: str) -> None:
    """redis-py's own pool fails the 101st concurrent command; ours carries 300, and
    a command that finds the pool exhausted waits for a connection."""
    client = connect(f"{redis_server}/9")
    replies = await asyncio.gather(*(client.blpop([f"pool-{i}"], 0.2) for i in range(300)))
    assert replies == [None] * 300
    await client.aclose()

    small = connect(f"{redis_server}/9?max_connections=2")  # the URL overrides the limit
    assert small.connection_pool.max_connections == 2
    replies = await asyncio.gather(*(small.blpop([f"pool-{i}"], 0.1) for i in range(5)))
    assert replies == [None] * 5
    await small.aclose()
