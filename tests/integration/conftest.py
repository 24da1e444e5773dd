"""A real cluster for the integration tests: Redis, two worker processes, a gateway.

Workers run as separate processes exactly as ``ksc worker`` runs them; the gateway runs
in the test's event loop on port 0. Each has one slot, so two concurrent sessions
must land on two workers.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace

import pytest
from redis.asyncio import Redis

from gateway.app import Gateway, serve
from shared import cluster
from shared.config import GatewaySettings
from shared.keys import Keys
from shared.up import free_port
from tests.conftest import CACHE, UNIT

PREFIX = "itest"
METRICS_PORTS = {"w1": free_port(), "w2": free_port()}


@dataclass
class Cluster:
    redis_url: str
    gateway: Gateway
    port: int
    workers: dict[str, subprocess.Popen[bytes]]

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_worker(
    redis_url: str,
    worker_id: str,
    slots: int = 1,
    prefix: str = PREFIX,
    metrics_port: int = 0,
    lease: float = 4.0,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``ksc worker`` as a real process; ``extra``: more flags (``--model-id`` …)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "worker",
            "--redis-url",
            redis_url,
            "--prefix",
            prefix,
            "--slots",
            str(slots),
            "--cache",
            str(CACHE),
            "--worker-id",
            worker_id,
            "--log-level",
            "warning",
            "--metrics-port",
            str(metrics_port),
            "--lease",
            str(lease),
            *extra,
        ],
    )


def start_up(redis_url: str, prefix: str, port: int, *extra: str) -> subprocess.Popen[str]:
    """``ksc up`` on an existing Redis, one worker with one slot, no sample; stdout piped."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "up",
            "--redis-url",
            redis_url,
            "--prefix",
            prefix,
            "--workers",
            "1",
            "--slots",
            "1",
            "--port",
            str(port),
            "--sample",
            "false",
            "--cache",
            str(CACHE),
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


async def wait_for_workers(redis: Redis, keys: Keys, count: int, limit: float = 60 * UNIT) -> None:
    async with asyncio.timeout(limit):
        while len(await cluster.workers(redis, keys)) < count:
            await asyncio.sleep(0.1)


@pytest.fixture(scope="session")
def worker_procs(
    redis_server: str, prepared_model: object
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    url = f"{redis_server}/0"
    procs = {wid: start_worker(url, wid, metrics_port=METRICS_PORTS[wid]) for wid in ("w1", "w2")}
    yield procs
    for proc in procs.values():
        proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
async def cluster_(
    redis_server: str, worker_procs: dict[str, subprocess.Popen[bytes]]
) -> AsyncIterator[Cluster]:
    url = f"{redis_server}/0"
    redis = Redis.from_url(url)
    await wait_for_workers(redis, Keys(PREFIX), len(worker_procs))
    await redis.aclose()
    settings = GatewaySettings(
        redis_url=url, prefix=PREFIX, host="127.0.0.1", port=0, claim_timeout=10 * UNIT
    )
    async with serve(settings) as (gateway, port):
        yield Cluster(url, gateway, port, worker_procs)


@pytest.fixture
async def running(cluster_: Cluster) -> Cluster:
    """The shared cluster, checked healthy: both workers alive with their slots free."""
    for wid, proc in cluster_.workers.items():
        assert proc.poll() is None, f"worker {wid} died"
    redis = cluster_.gateway.redis
    async with asyncio.timeout(30 * UNIT):
        while sum(w.slots_free for w in await cluster.workers(redis, Keys(PREFIX))) < 2:
            await asyncio.sleep(0.1)
    return cluster_


@pytest.fixture
async def empty_gateway(redis_server: str) -> AsyncIterator[Cluster]:
    """A gateway on a prefix no worker serves: every session gets status 9."""
    settings = GatewaySettings(
        redis_url=f"{redis_server}/0", prefix="nobody", host="127.0.0.1", port=0
    )
    async with serve(replace(settings)) as (gateway, port):
        yield Cluster(settings.redis_url, gateway, port, {})
