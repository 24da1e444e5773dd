"""Fixtures of the multi-host tests: the network and the cluster of :mod:`harness.multihost`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.multihost import Cluster, Network, speech_pcm


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    reason = Network.check_privilege()
    if reason is not None:
        pytest.skip(reason)
    net = Network()
    try:
        net.create()
        yield net
    finally:
        net.remove()


@pytest.fixture(scope="module")
def multihost(
    network: Network, prepared_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    cluster = Cluster(network, prepared_model.path.parent.parent, tmp_path_factory.mktemp("mh"))
    try:
        cluster.start()
        started = time.monotonic()
        cluster.wait_ready()
        print(f"\n[multihost] cluster ready in {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        network.heal_all()  # a worker cut off from Redis cannot stop (see docs/multihost.md)
        for name, how in cluster.stop().items():
            print(f"[multihost] {name}: {how}")


@pytest.fixture(scope="module")
def speech_file(espeak_wav: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_pcm(tmp_path_factory.mktemp("mh-speech") / "speech.pcm")
