"""One supervised child process of ``ksc up``: started, checked, restarted, stopped."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass

log = logging.getLogger(__name__)
_HEALTH_TIMEOUT_S = 2.0
#: Silent health checks in a row after which a live process counts as hung.
HUNG_AFTER = 3
#: A process that has not answered its health URL this long after starting is hung.
START_GRACE_S = 180.0


@dataclass
class Process:
    """A child; ``health`` is a URL that answers while it is not hung ("" checks none)."""

    name: str
    argv: list[str]
    health: str = ""
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    answered: bool = False  # it has answered once: only then do silences count
    silent: int = 0  # health checks in a row without an answer
    started: float = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv)
        self.answered, self.silent = False, 0
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def hung(self) -> bool:
        """Poll the health URL; True after ``HUNG_AFTER`` silent checks in a row, or
        when it has not answered at all within ``START_GRACE_S`` of starting."""
        if not self.health:
            return False
        try:
            with urllib.request.urlopen(self.health, timeout=_HEALTH_TIMEOUT_S):
                self.answered, self.silent = True, 0
        except OSError:
            if self.answered:
                self.silent += 1
            elif time.monotonic() - self.started > START_GRACE_S:
                return True
        return self.silent >= HUNG_AFTER

    def restart(self, why: str) -> None:
        log.warning("%s %s; restarting it", self.name, why)
        if self.alive() and self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.restarts += 1
        self.start()

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM): gateways and workers drain, then exit."""
        if self.alive() and self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for it to exit, then kill it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
