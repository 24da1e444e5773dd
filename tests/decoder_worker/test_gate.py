"""The CPU gate: a token per decoding process, returned by the kernel when a holder dies."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from decoder_worker.forking import fork_process
from decoder_worker.gate import CpuGate, usable_cpus
from decoder_worker.pipes import recv_frame, send_frame


@pytest.fixture
def gate() -> Iterator[CpuGate]:
    g = CpuGate(1)
    yield g
    g.remove()


def _hold(gate: CpuGate, seconds: float) -> tuple[int, socket.socket]:
    """A process that holds a token for ``seconds`` and reports when it held it."""

    def target(sock: socket.socket) -> None:
        with gate.held():
            start = time.monotonic()
            time.sleep(seconds)
            send_frame(sock, (start, time.monotonic()))
        recv_frame(sock)  # until the test lets go

    return fork_process(target)


def _finish(holder: tuple[int, socket.socket]) -> tuple[float, float]:
    pid, sock = holder
    span = recv_frame(sock)
    assert isinstance(span, tuple)
    start, end = span
    send_frame(sock, "bye")
    sock.close()
    os.waitpid(pid, 0)
    return start, end


def test_one_token_runs_holders_one_after_another(gate: CpuGate) -> None:
    started = [_hold(gate, 0.2) for _ in range(3)]
    spans = sorted(_finish(holder) for holder in started)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # never two at once
    assert gate.free() == 1


def test_a_killed_holder_gives_its_token_back(gate: CpuGate) -> None:
    def target(sock: socket.socket) -> None:
        with gate.held():
            send_frame(sock, "holding")
            time.sleep(60)

    pid, sock = fork_process(target)
    assert recv_frame(sock) == "holding"
    assert gate.free() == 0
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sock.close()
    assert gate.free() == 1
    with gate.held():  # and the next one gets it
        assert gate.free() == 0


def test_more_tokens_than_holders_never_wait() -> None:
    gate = CpuGate(3)
    try:
        with gate.held(), gate.held():
            assert gate.free() == 1
        assert gate.free() == 3
    finally:
        gate.remove()
    with pytest.raises(ValueError):
        CpuGate(0)


def test_usable_cpus_follow_the_cgroup_quota(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert usable_cpus(quota) == cpus
    quota.write_text("50000 100000\n")  # half a CPU: still one decoder
    assert usable_cpus(quota) == 1
    quota.write_text(f"{cpus * 300000} 100000\n")  # a limit above the CPUs there are
    assert usable_cpus(quota) == cpus
    assert usable_cpus(tmp_path / "absent") == cpus
