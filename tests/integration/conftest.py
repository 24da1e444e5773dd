"""A real cluster for the integration tests: Redis, two worker processes, a gateway.

Workers run as separate processes exactly as ``ksc worker`` runs them; the gateway runs
in the test's event loop on port 0. Each has one slot, so two concurrent sessions
must land on two workers.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from gateway.app import serve
from harness.cluster import Cluster, free_port, start_worker, stop, wait_for_workers
from harness.env import UNIT
from shared import cluster
from shared.config import GatewaySettings
from shared.keys import Keys

PREFIX = "itest"
METRICS_PORTS = {"w1": free_port(), "w2": free_port()}


@pytest.fixture(scope="session")
def worker_procs(
    redis_server: str, prepared_model: object
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    url = f"{redis_server}/0"
    # No silence timeout here: it has its own worker in test_silence.py, and on these
    # workers it would race the gateway's bounds on bombs of silence (test_bounds.py).
    procs = {
        wid: start_worker(
            url,
            wid,
            prefix=PREFIX,
            metrics_port=METRICS_PORTS[wid],
            extra=("--silence-timeout", "0"),
        )
        for wid in ("w1", "w2")
    }
    yield procs
    stop(*procs.values())


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
