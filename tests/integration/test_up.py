"""``ksc up`` supervises its children: dead or hung workers are replaced, Redis is
started again, and a Ctrl-C leaves nothing that a restart would take for live."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from harness.cluster import KSC, free_port, start_up
from harness.env import CACHE, UNIT
from harness.measure import children
from ksc.client import transcribe_file
from ksc.up.supervisor import STOP_GRACE_S


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
        up.communicate(timeout=(STOP_GRACE_S + 30) * UNIT)
    assert up.returncode == 0


def _up_own_redis(cache: Path, port: int) -> subprocess.Popen[str]:
    """``ksc up`` with its own persisted Redis under ``cache``, in a process group of its
    own, so that a test can Ctrl-C it as a terminal does (SIGINT to the whole group)."""
    return subprocess.Popen(
        [
            *KSC,
            "up",
            *("--workers", "1", "--slots", "1", "--port", str(port)),
            *("--sample", "false", "--cache", str(cache), "--log-level", "warning"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _until(up: subprocess.Popen[str], prefix: str) -> str:
    assert up.stdout is not None
    for line in up.stdout:
        if line.startswith(prefix):
            return line
    pytest.fail(f"ksc up exited ({up.wait()}) before printing {prefix!r}")


def _redis_pid(up: subprocess.Popen[str]) -> int:
    (pid,) = [
        p for p in children(up.pid) if Path(f"/proc/{p}/comm").read_text().strip() == "redis-server"
    ]
    return pid


def test_ctrl_c_and_restart_on_the_persisted_redis(
    tmp_path: Path, prepared_model: object, testdata: Path
) -> None:
    """Issue 12: a restart on the Redis a Ctrl-C left behind said ready at once, counting
    the slots of the workers that had just stopped, and refused every session."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(CACHE / "models")  # the prepared model, not a copy
    port = free_port()
    first = _up_own_redis(cache, port)
    try:
        _until(first, "serving;")
        (worker,) = status(port)["workers"]  # type: ignore[index]
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in its terminal
        first.communicate(timeout=(STOP_GRACE_S + 30) * UNIT)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(worker["pid"], 0)

    second = _up_own_redis(cache, port)
    try:
        _until(second, "ready in")
        live = status(port)["workers"]  # type: ignore[index]
        assert [w["pid"] for w in live] != [worker["pid"]], "only its own, live workers count"
        assert all(Path(f"/proc/{w['pid']}").exists() for w in live)
        _until(second, "serving;")
        clip = sorted((testdata / "clips").glob("*.wav"))[0]
        assert transcribe_file(f"ws://127.0.0.1:{port}", clip).text

        # Redis dies under the running cluster: ksc up starts it again from its AOF.
        os.kill(_redis_pid(second), signal.SIGKILL)
        deadline = time.monotonic() + 60 * UNIT
        while time.monotonic() < deadline:
            snap = status(port)
            if snap is not None and snap.get("workers"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the cluster did not come back after Redis died")
        assert transcribe_file(f"ws://127.0.0.1:{port}", clip).text
    finally:
        os.killpg(second.pid, signal.SIGINT)
        second.communicate(timeout=(STOP_GRACE_S + 30) * UNIT)
    assert second.returncode == 0
