"""A private ``redis-server`` on loopback: ``ksc up``'s, and the tests' and benchmarks'."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too: redis-server in cluster
    mode refuses a port above 55535."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with suppress(OSError), socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10000))
                return port


@dataclass
class LocalRedis:
    """A private redis-server on loopback, its files in ``data_dir``: with AOF
    persistence (``ksc up``'s), or none (tests and benchmarks)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    persistent: bool = True

    @property
    def base_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/0"

    def argv(self) -> list[str]:
        """The command line of this redis-server."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit(
                "redis-server not found: run `make setup` (or apt-get install redis-server)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.persistent else "no",
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]

    def start(self) -> None:
        # Its own session: a Ctrl-C in the terminal reaches the processes that use Redis,
        # and they still have it while they stop (a worker removes its heartbeat).
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until it answers PING (after an AOF reload, too); SystemExit if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
