"""The chart's pods, run with podman from the images this tree builds.

``images`` builds them (``scripts/build-images``: a no-op when they are up to date, the
whole chain — Debian base included — on a fresh machine). ``pods`` renders the real chart
with ``deploy/podman/values.yaml`` and starts Redis, two decoder workers, the gateway and
the batch worker from the rendered pod specs (:mod:`harness.pods`), on free ports; every
container is removed at the end, pass or fail. docs/deploy.md, "Images and the container
test", says what runs and what it measured.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from harness.cluster import wait_ready
from harness.env import REPO, UNIT
from harness.pods import (
    CHART,
    VALUES,
    Manifests,
    Node,
    Pod,
    free_ports,
    heartbeat,
    helm_template,
    podman_missing,
)

#: The chart's key prefix and its decoders' Deployment.
PREFIX = "ksc"
DECODERS = "ksc-decoder-ko"


@dataclass
class Pods:
    node: Node
    redis: Pod
    workers: list[Pod]
    gateway: Pod
    batch: Pod
    password: str
    ports: dict[int, int]
    #: seconds from `podman run` to ready, by pod name
    ready: dict[str, float] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.ports[6379]}/0"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports[8888]}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ports[8888]}"

    def worker(self, worker_id: str) -> Pod:
        """The decoder pod whose worker id (its pod name, ``KSC_WORKER_ID``) this is."""
        (pod,) = [p for p in self.workers if p.name == worker_id]
        return pod


@pytest.fixture(scope="session")
def images() -> float:
    """Build (or find up to date) the images; the seconds it took."""
    reason = podman_missing()
    if reason:
        pytest.fail(f"the container stage cannot run: {reason}")
    start = time.monotonic()

    proc = subprocess.run(
        [str(REPO / "scripts" / "build-images")],
        capture_output=True,
        text=True,
        timeout=900 * UNIT,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-images failed:\n{proc.stdout}\n{proc.stderr}")
    took = time.monotonic() - start
    print(proc.stdout, f"images ready in {took:.1f} s", file=sys.stderr)
    return took


@pytest.fixture(scope="module")
def pods(images: float, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    redis_port, gateway_port, metrics_1, metrics_2 = free_ports(4)
    ports = {6379: redis_port, 8888: gateway_port, 9100: metrics_1}
    password = secrets.token_hex(16)
    docs = helm_template(CHART, [VALUES], {"redis.auth.password": password})
    with Node(Manifests(docs), tmp_path_factory.mktemp("pods"), ports) as node:
        try:
            redis = node.run("ksc-redis")
            ready = {"redis": redis.wait_ready(60 * UNIT)}
            # Two replicas of one Deployment: the second's metrics port moves too, as
            # its own pod IP would have it.
            workers = [node.run(DECODERS), node.run(DECODERS, ports={metrics_1: metrics_2})]
            for i, worker in enumerate(workers):
                hint = heartbeat(f"redis://:{password}@127.0.0.1:{redis_port}/0", worker)
                ready[f"worker-{i + 1}"] = worker.wait_ready(300 * UNIT, hint=hint)
            gateway = node.run("ksc-gateway")
            ready["gateway"] = gateway.wait_ready(60 * UNIT, interval=0.1)
            batch = node.run("ksc-batch-worker")
            wait_ready(f"http://127.0.0.1:{gateway_port}", slots=8, limit=60 * UNIT)
        except BaseException:
            for pod in node.pods:
                print(f"--- {pod.name}\n{pod.logs(30)}", file=sys.stderr)
            raise
        print(f"start to ready, s: {ready}", file=sys.stderr)
        yield Pods(node, redis, workers, gateway, batch, password, ports, ready)
