"""The page's own small cluster and a headless Chromium whose microphone plays a file.

The cluster is the integration tests' kind (real Redis, real worker processes, the
gateway in the test's event loop) under its own key prefix and worker ids, so it can
run in the same pytest session as ``tests/integration`` without sharing state.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.app import serve
from harness.cluster import Cluster, start_worker, stop, wait_for_workers
from harness.env import UNIT
from shared.config import GatewaySettings
from shared.keys import Keys

CHROMIUM = Path("/usr/bin/chromium")
PREFIX = "webtest"
WORKERS = ("web-1", "web-2")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium (``make setup`` installs it), driven by Playwright's Python
    driver, which brings no browser of its own. Missing is a failure, not a skip."""
    assert CHROMIUM.exists(), f"{CHROMIUM} not found: run make setup (apt-get install chromium)"
    return CHROMIUM


@pytest.fixture(scope="session")
def web_workers(
    chromium: Path, redis_server: str, prepared_model: object
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    url = f"{redis_server}/0"
    procs = {wid: start_worker(url, wid, slots=1, prefix=PREFIX) for wid in WORKERS}
    yield procs
    stop(*procs.values())


@pytest.fixture(scope="session")
async def web_cluster(
    redis_server: str, web_workers: dict[str, subprocess.Popen[bytes]]
) -> AsyncIterator[Cluster]:
    """A gateway (port 0) serving the page, with two one-slot workers behind it."""
    url = f"{redis_server}/0"
    redis = Redis.from_url(url)
    await wait_for_workers(redis, Keys(PREFIX), len(web_workers))
    await redis.aclose()
    settings = GatewaySettings(
        redis_url=url, prefix=PREFIX, host="127.0.0.1", port=0, claim_timeout=10 * UNIT
    )
    async with serve(settings) as (gateway, port):
        yield Cluster(url, gateway, port, web_workers)
