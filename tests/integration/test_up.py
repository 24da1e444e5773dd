"""``ksc up`` supervises its children: dead or hung workers are replaced."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from harness.cluster import free_port, start_up
from harness.env import UNIT


def status(port: int) -> dict | None:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
            return json.load(resp)  # type: ignore[no-any-return]
    except OSError:
        return None


def wait_for_worker(port: int, not_pid: int = 0, limit: float = 90 * UNIT) -> int:
    """The pid of a registered worker other than ``not_pid``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        snap = status(port)
        for worker in (snap or {}).get("workers", []):
            if worker["pid"] != not_pid and worker["heartbeat_age"] < 3:
                return int(worker["pid"])
        time.sleep(0.2)
    pytest.fail("no worker registered in time")


def test_dead_and_hung_workers_are_replaced(redis_server: str, prepared_model: object) -> None:
    port = free_port()
    up = start_up(f"{redis_server}/0", "uptest", port)
    try:
        assert up.stdout is not None
        for line in up.stdout:  # ready, every process answered a health check, supervising
            if line.startswith("serving;"):
                break
        first = wait_for_worker(port)
        os.kill(first, signal.SIGSTOP)  # hung: alive, but its event loop answers nothing
        second = wait_for_worker(port, not_pid=first)
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)  # the hung one was killed
        os.kill(second, signal.SIGKILL)  # dead
        third = wait_for_worker(port, not_pid=second)
        assert len({first, second, third}) == 3
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60 * UNIT)
    assert up.returncode == 0
