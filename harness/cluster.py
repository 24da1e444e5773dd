"""The cluster's parts as real processes, exactly as ``ksc`` runs them.

Workers, gateways and ``ksc up`` start as subprocesses (``python -m ksc …``); the
tests also embed a gateway in their own event loop with :func:`gateway.app.serve`.
Redis is a private ``redis-server`` on a free loopback port (:class:`LocalRedis`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from gateway.state import Gateway
from harness.env import CACHE, UNIT
from ksc.local_redis import LocalRedis, cluster_port, free_port
from shared import cluster
from shared.keys import Keys

__all__ = [
    "KSC",
    "Cluster",
    "LocalRedis",
    "cluster_port",
    "free_port",
    "redis_server",
    "start_gateway",
    "start_up",
    "start_worker",
    "stop",
    "wait_for_workers",
    "wait_ready",
]

#: How to run the ``ksc`` command with this interpreter.
KSC = [sys.executable, "-m", "ksc"]


@dataclass
class Cluster:
    """A gateway embedded in the test's event loop, with worker processes behind it."""

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
    worker_id: str = "",
    *,
    prefix: str,
    slots: int = 1,
    metrics_port: int = 0,
    lease: float | None = None,
    cache: Path | str = CACHE,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``ksc worker`` as a real process; ``extra``: more flags (``--model-id`` …).
    Without ``worker_id`` the worker names itself (host-pid)."""
    argv = [
        *KSC,
        "worker",
        "--redis-url",
        redis_url,
        "--prefix",
        prefix,
        "--slots",
        str(slots),
        "--cache",
        str(cache),
        "--log-level",
        "warning",
        "--metrics-port",
        str(metrics_port),
    ]
    if worker_id:
        argv += ["--worker-id", worker_id]
    if lease is not None:
        argv += ["--lease", str(lease)]
    return subprocess.Popen([*argv, *extra])


def start_gateway(redis_url: str, prefix: str, port: int) -> subprocess.Popen[bytes]:
    """``ksc gateway`` as a real process on loopback."""
    return subprocess.Popen(
        [
            *KSC,
            "gateway",
            "--redis-url",
            redis_url,
            "--prefix",
            prefix,
            "--log-level",
            "warning",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ]
    )


def start_up(redis_url: str, prefix: str, port: int, *extra: str) -> subprocess.Popen[str]:
    """``ksc up`` on an existing Redis, one worker with one slot, no sample; stdout piped."""
    return subprocess.Popen(
        [
            *KSC,
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


def stop(*procs: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM to every process (they drain), then wait for each; kill what lingers."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_for_workers(redis: Redis, keys: Keys, count: int, limit: float = 60 * UNIT) -> None:
    """Until ``count`` workers have fresh heartbeats (TimeoutError after ``limit``)."""
    async with asyncio.timeout(limit):
        while len(await cluster.workers(redis, keys)) < count:
            await asyncio.sleep(0.1)


def wait_ready(http: str, slots: int, limit: float = 120) -> None:
    """Until the gateway at ``http`` is ready with at least ``slots`` decoder slots."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{http}/readyz", timeout=1) as resp:
                if json.load(resp).get("slots", 0) >= slots:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{http} did not become ready with {slots} slots in {limit:g} s")


@contextlib.contextmanager
def redis_server(persistent: bool = False) -> Iterator[str]:
    """A private redis-server in a temporary directory; yields its URL (database 0)."""
    with tempfile.TemporaryDirectory(prefix="ksc-redis-") as data:
        server = LocalRedis(Path(data), persistent=persistent)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
