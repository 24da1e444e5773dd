"""The supervisor of ``ksc up``: keeps its processes alive until told to stop.

A process that exits is started again; one that stops answering its health URL
(:meth:`~ksc.up.process.Process.hung`) is killed and started again. The private Redis,
if there is one, is started again too (on its port, from its AOF). SIGTERM or SIGINT
(Ctrl-C) sets :attr:`Supervisor.stopping`; every wait here returns soon after it.
Stopping stops the processes first and Redis last, so that workers can still remove
their heartbeats: a restarted cluster never counts the slots of dead workers.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable

from ksc.local_redis import LocalRedis
from ksc.up.process import Process

log = logging.getLogger(__name__)
#: How often health URLs are polled while supervising.
HEALTH_INTERVAL_S = 2.0
#: How long processes get to exit on their own after SIGTERM before they are killed.
#: Longer than the gateway's and workers' default drain (30 s) plus the gateway's close
#: grace (5 s): sessions open at a Ctrl-C finish, or hear 1012, before anything is killed.
STOP_GRACE_S = 45.0
_TICK_S = 0.5


class StartFailed(Exception):
    """A process exited while the cluster was starting."""


class Supervisor:
    def __init__(self, processes: list[Process], redis: LocalRedis | None = None) -> None:
        self.processes = processes
        #: ``ksc up``'s own redis-server (running already), or None for a given URL
        self.redis = redis
        self.stopping = False

    def install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def wait_until(self, ready: Callable[[], bool], poll: float = 0.2) -> bool:
        """Wait until ``ready()``; False if told to stop first. :class:`StartFailed`
        when a process exits meanwhile."""
        while not self.stopping:
            if ready():
                return True
            dead = [p.name for p in self.processes if not p.alive()]
            if dead:
                raise StartFailed(f"failed to start: {', '.join(dead)} exited")
            time.sleep(poll)
        return False

    def check(self, health: bool = True) -> None:
        """One round: restart Redis and the processes that exited, and (``health``)
        the processes that hung."""
        if self.redis is not None and self.redis.proc is not None:
            code = self.redis.proc.poll()
            if code is not None and not self.stopping:
                log.warning("redis-server exited (%s); restarting it", code)
                self.redis.start()
        for process in self.processes:
            if self.stopping:
                return
            if not process.alive():
                process.restart(f"exited ({process.returncode})")
            elif health and process.hung():
                process.restart("stopped answering its health checks (hung)")

    def supervise(self) -> None:
        """Replace dead and hung processes until told to stop."""
        next_health = 0.0
        while not self.stopping:
            health = time.monotonic() >= next_health
            self.check(health)
            if health:
                next_health = time.monotonic() + HEALTH_INTERVAL_S
            time.sleep(_TICK_S)

    def stop(self) -> None:
        """SIGTERM to every process at once, then wait for each (killing laggards);
        then stop Redis."""
        for process in self.processes:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            process.join(deadline - time.monotonic())
        if self.redis is not None:
            self.redis.stop()
