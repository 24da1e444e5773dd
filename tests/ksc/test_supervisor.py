"""``ksc up``'s supervisor with real child processes (tiny Python programs)."""

from __future__ import annotations

import sys

import pytest

from ksc.up.process import Process
from ksc.up.supervisor import StartFailed, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
QUITTER = [sys.executable, "-c", "pass"]


def test_a_process_that_exits_is_started_again_and_stop_ends_all() -> None:
    quitter, sleeper = Process("quitter", QUITTER), Process("sleeper", SLEEPER)
    supervisor = Supervisor([quitter, sleeper])
    supervisor.start()
    try:
        assert quitter.proc is not None
        quitter.proc.wait(30)
        first = quitter.proc
        supervisor.check(health=False)
        assert quitter.restarts == 1 and quitter.proc is not first
        assert sleeper.restarts == 0 and sleeper.alive()
    finally:
        supervisor.stop()
    assert not sleeper.alive() and not quitter.alive()
    assert sleeper.returncode is not None


def test_a_process_that_exits_during_start_up_fails_it() -> None:
    quitter = Process("quitter", QUITTER)
    supervisor = Supervisor([quitter, Process("sleeper", SLEEPER)])
    supervisor.start()
    try:
        with pytest.raises(StartFailed, match="quitter exited"):
            supervisor.wait_until(lambda: False, poll=0.05)
    finally:
        supervisor.stop()


def test_waiting_ends_when_told_to_stop() -> None:
    supervisor = Supervisor([])
    supervisor.stopping = True
    assert supervisor.wait_until(lambda: True) is False


def test_stop_waits_longer_than_the_children_drain() -> None:
    """A Ctrl-C must not kill a gateway that is still draining: its clients would get a
    dropped socket (1006) instead of their finals or a 1012 (found by the soak)."""
    from gateway.app import _CLOSE_GRACE_S
    from ksc.up.supervisor import STOP_GRACE_S
    from shared.config import GatewaySettings, WorkerSettings

    assert STOP_GRACE_S > GatewaySettings().drain_timeout + _CLOSE_GRACE_S
    assert STOP_GRACE_S > WorkerSettings().drain_timeout
