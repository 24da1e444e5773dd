"""Every Redis client of the cluster comes from :func:`connect`, whatever Redis is behind.

URL schemes (the Helm chart renders all of them into ``KSC_REDIS_URL``)::

    redis://[[user]:password@]host:port[/db]                 one server
    rediss://…                                               the same over TLS
    redis+sentinel://[[user]:password@]h1:p1[,h2:p2…]/MASTER[/db]
    redis+cluster://[[user]:password@]h1:p1[,h2:p2…]
    rediss+sentinel://…, rediss+cluster://…                  over TLS

With Sentinel the password is sent to the master and its replicas and, by default, to
the sentinels too (Bitnami-style deployments protect both with one password);
``?sentinel_password=OTHER`` gives the sentinels their own, ``?sentinel_password=``
(empty) none. The user name is the master's only: sentinels protected by an ACL user
of their own get it with ``?sentinel_username=NAME``.

Over TLS the server's certificate is checked against the system's CAs, or against the
CA bundle ``?ssl_ca_certs=/path/ca.crt`` names (every scheme; with Sentinel it checks
the sentinels and the master alike).

Every client retries a command that failed on a broken or refused connection, with
exponential backoff (:data:`RETRIES` attempts, at most :data:`BACKOFF_CAP_S` apart:
about ten seconds in all), so a Redis restart or a Sentinel failover shorter than
that is invisible to the caller. Longer outages surface as
:class:`redis.exceptions.ConnectionError`; the long-running loops of the gateway and
the worker then back off and try again themselves (see ``docs/reliability.md``).

A process keeps at most :data:`MAX_CONNECTIONS` connections per server (a URL option
``?max_connections=N`` overrides it); with one server, a command that finds them all
busy waits up to :data:`POOL_WAIT_S` for one to come back instead of failing at once
(redis-py's default pool fails the 101st concurrent command).

A Cluster client is a :class:`redis.asyncio.cluster.RedisCluster`, not a
:class:`redis.asyncio.Redis`; it answers every command this project sends (one hash
slot per command or per transaction, see :mod:`shared.keys`), so :func:`connect` hands
it out under the ``Redis`` type the rest of the code is written against.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

#: Attempts after the first for a command that met a connection error or a timeout.
RETRIES = 12
#: Longest pause between two attempts (they start at 50 ms and double).
BACKOFF_CAP_S = 1.0
#: A connection idle this long is PINGed before it is used again (seconds).
HEALTH_CHECK_INTERVAL_S = 10
#: Connecting gives up after this long (an unreachable host, not a refused port).
CONNECT_TIMEOUT_S = 2.0
#: Connections one process may hold to one server: a gateway with hundreds of streams
#: has that many short commands in flight (Redis itself accepts 10000 clients).
MAX_CONNECTIONS = 1000
#: How long a command waits for a pooled connection when all are busy.
POOL_WAIT_S = 10.0
#: TCP keepalive: a silent peer is declared dead after about IDLE + INTERVAL * COUNT.
#: Keepalive probes only idle connections; TCP_USER_TIMEOUT (ms) also drops one whose
#: sent data goes unacknowledged that long (a cut link mid-command), instead of TCP's
#: default of ~15 minutes of retransmissions. It does not limit a blocking read, where
#: nothing is unacknowledged.
_KEEPALIVE = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 11000}

Kind = Literal["standalone", "sentinel", "cluster"]
_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}


#: Longest pause of a loop that retries Redis by itself (after the client's own retries).
LOOP_BACKOFF_CAP_S = 2.0


def backoff(failures: int) -> float:
    """Seconds a loop waits after ``failures`` consecutive Redis failures: 0.2, 0.4 … 2.

    For loops that must outlive an outage (a worker's claim loop and heartbeat, the
    gateway's pub/sub reader), on top of the retries every command already gets."""
    return float(min(LOOP_BACKOFF_CAP_S, 0.1 * 2 ** min(failures, 8)))


class RedisURLError(ValueError):
    """A Redis URL this module cannot use; the message says what is wrong."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names, parsed; :func:`connect` builds the client from it."""

    kind: Kind
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    db: int = 0
    #: Sentinel only: the monitored master's name.
    master: str = ""
    #: Sentinel only: the sentinels' own password (``None``: none).
    sentinel_password: str | None = None
    #: Sentinel only: the sentinels' own ACL user (``None``: the default user).
    sentinel_username: str | None = None
    #: TLS only: a CA bundle to check the server's certificate with (``None``: the system's).
    ssl_ca_certs: str | None = None
    #: Standalone only: the URL as given, for :meth:`Redis.from_url` (query options too).
    url: str = field(default="", repr=False)


def _hosts(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in netloc.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = item.strip(), str(default_port)
        host = host.strip("[]")  # IPv6 literals
        if not host:
            raise RedisURLError(f"empty host in {netloc!r}")
        try:
            hosts.append((host, int(port)))
        except ValueError:
            raise RedisURLError(f"bad port {port!r} in {netloc!r}") from None
    return tuple(hosts)


def _db(text: str) -> int:
    try:
        return int(text or "0")
    except ValueError:
        raise RedisURLError(f"database must be a number, not {text!r}") from None


def parse_url(url: str) -> RedisTarget:
    """Parse any supported Redis URL; :class:`RedisURLError` says why one is not."""
    scheme = url.partition("://")[0].lower()
    if scheme not in _SCHEMES or "://" not in url:
        raise RedisURLError(
            f"unsupported Redis URL {url!r}: use redis://, rediss://, "
            "redis+sentinel://HOST:PORT[,…]/MASTER[/DB] or redis+cluster://HOST:PORT[,…]"
        )
    kind, tls = _SCHEMES[scheme]
    # urlsplit rejects nothing but cannot parse a host list as a port: split by hand.
    rest = url.split("://", 1)[1]
    # The hosts end at the first "/" (a path) or "?" (options, which may hold paths:
    # ?ssl_ca_certs=/etc/…), whichever comes first.
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    location, tail = rest[:cut], rest[cut:]
    path, _, query = tail.partition("?")
    userinfo, _, netloc = location.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    options = parse_qs(query, keep_blank_values=True)
    if kind == "standalone":
        parts = urlsplit(url)
        port = parts.port or 6379  # also validates the port
        return RedisTarget(
            kind,
            tls,
            ((parts.hostname or "127.0.0.1", port),),
            username,
            password,
            _db(path.strip("/")),
            ssl_ca_certs=_option(options, "ssl_ca_certs"),  # redis-py reads it from url
            url=url,
        )
    hosts = _hosts(netloc, 26379 if kind == "sentinel" else 6379)
    segments = [s for s in path.split("/") if s]
    ca = _option(options, "ssl_ca_certs")
    if kind == "cluster":
        if segments and segments != ["0"]:
            raise RedisURLError("Redis Cluster has only database 0")
        return RedisTarget(kind, tls, hosts, username, password, ssl_ca_certs=ca)
    if not segments or len(segments) > 2:
        raise RedisURLError(f"a Sentinel URL needs /MASTER_NAME[/DB] after the hosts: {url!r}")
    sentinel_password = password
    if "sentinel_password" in options:
        sentinel_password = options["sentinel_password"][-1] or None
    return RedisTarget(
        kind,
        tls,
        hosts,
        username,
        password,
        _db(segments[1] if len(segments) > 1 else ""),
        master=unquote(segments[0]),
        sentinel_password=sentinel_password,
        sentinel_username=_option(options, "sentinel_username"),
        ssl_ca_certs=ca,
    )


def _option(options: dict[str, list[str]], name: str) -> str | None:
    """A URL query option's last value; absent or empty: ``None``."""
    values = options.get(name)
    return values[-1] or None if values else None


def _keepalive_options() -> dict[int, int]:
    return {
        getattr(socket, name): value
        for name, value in _KEEPALIVE.items()
        if hasattr(socket, name)  # Linux names; elsewhere the OS defaults apply
    }


def _resilience() -> dict[str, Any]:
    """Connection options every client gets: retries with backoff, keepalive, health."""
    return {
        "retry": Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=0.05), RETRIES),
        "retry_on_error": [ConnectionError, TimeoutError],
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "socket_keepalive_options": _keepalive_options(),
    }


class _SentinelMaster(Redis):  # type: ignore[misc]  # redis is untyped here
    """The master's client; closing it also closes the connections to the sentinels."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                await client.aclose()


def connect(url: str) -> Redis:
    """A client for the Redis ``url`` names, with retries and backoff configured.

    Nothing is connected yet: the first command connects (and, for Cluster, discovers
    the slots). Close the client with ``await client.aclose()``.
    """
    target = parse_url(url)
    options = _resilience()
    if target.kind == "standalone":
        pool = BlockingConnectionPool.from_url(
            target.url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S, **options
        )
        return Redis.from_pool(pool)
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    tls: dict[str, Any] = {}
    if target.tls:
        tls = {"ssl": True}
        if target.ssl_ca_certs:
            tls["ssl_ca_certs"] = target.ssl_ca_certs
    if target.kind == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            **auth,
            **tls,
            **options,
        )
        return cast(Redis, cluster)
    sentinel_options = {
        k: v for k, v in options.items() if k.startswith("socket_") or k.startswith("retry")
    }
    sentinel = Sentinel(
        list(target.hosts),
        sentinel_kwargs={
            **sentinel_options,
            **tls,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
        },
        **tls,
    )
    client = cast(
        _SentinelMaster,
        sentinel.master_for(
            target.master,
            redis_class=_SentinelMaster,
            db=target.db,
            max_connections=MAX_CONNECTIONS,
            **auth,
            **options,
        ),
    )
    client.sentinel = sentinel
    return client
