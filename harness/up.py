"""``ksc up`` run as a user runs it, under test: started, looked into, faulted, restarted.

:class:`Up` starts ``python -m ksc up`` in a process group of its own, as a shell runs
a foreground job, so that :meth:`Up.ctrl_c` sends SIGINT to the whole group as a
terminal's Ctrl-C does. Its children are found in ``/proc`` by their command lines
(:func:`classify`): the gateway, the decoder workers (named by their metrics port,
which ``ksc up`` keeps when it restarts one), the batch worker and redis-server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from harness.measure import children, memory


@dataclass(frozen=True)
class Child:
    """One process ``ksc up`` started."""

    pid: int
    #: ``gateway``, ``worker``, ``batch-worker``, ``redis`` or ``other``
    role: str
    #: stable across the supervisor's restarts: ``worker:<metrics port>`` for workers
    name: str


def direct_children(pid: int) -> list[int]:
    """The children of ``pid`` (of any of its threads)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(p) for p in f.read().split()]
    return sorted(set(out))


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def classify(pid: int, argv: list[str]) -> Child:
    """What a child of ``ksc up`` is, from its command line."""
    text = " ".join(argv)
    if "redis-server" in text:
        return Child(pid, "redis", "redis")
    if "-m ksc gateway" in text:
        return Child(pid, "gateway", "gateway")
    if "-m ksc batch-worker" in text:
        return Child(pid, "batch-worker", "batch-worker")
    if "-m ksc worker" in text:
        port = argv[argv.index("--metrics-port") + 1] if "--metrics-port" in argv else str(pid)
        return Child(pid, "worker", f"worker:{port}")
    return Child(pid, "other", f"other:{pid}")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def rss_mb(pid: int) -> float | None:
    try:
        return round(memory(pid)["rss"], 2)
    except (OSError, KeyError):
        return None


def forks_pss(pid: int) -> tuple[int, float]:
    """How many descendants ``pid`` has (a worker's session and decoding processes)
    and their PSS in MB, summed: what they cost beyond the pages they share."""
    kids = children(pid)
    total = 0.0
    for kid in kids:
        with contextlib.suppress(OSError, KeyError):
            total += memory(kid)["pss"]
    return len(kids), round(total, 2)


def http_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(status, parsed body) of a GET; (0, error text) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError, OSError):
            return exc.code, json.load(exc)
        return exc.code, None
    except (OSError, ValueError) as exc:
        return 0, str(exc)


@dataclass
class Up:
    """One ``ksc up`` process (and, after :meth:`restart`, its successor)."""

    cache: Path
    port: int
    workers: int
    slots: int
    log: Path
    log_level: str = "warning"
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: list[dict[str, Any]] = field(default_factory=list)
    _log_file: IO[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ksc",
            "up",
            "--cache",
            str(self.cache),
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--slots",
            str(self.slots),
            "--log-level",
            self.log_level,
            *self.extra,
        ]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def total_slots(self) -> int:
        return self.workers * self.slots

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        if self._log_file is None:
            self._log_file = self.log.open("ab")
        self._log_file.write(f"\n=== soak: starting {' '.join(self.argv)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, as a shell's foreground job
        )
        self.starts.append({"pid": self.proc.pid, "at": time.time()})

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[Child]:
        if not self.running():
            return []
        return [classify(pid, cmdline(pid)) for pid in direct_children(self.pid)]

    def child(self, name: str) -> Child | None:
        return next((c for c in self.children() if c.name == name), None)

    def redis_url(self) -> str:
        """The Redis URL ``ksc up`` gave its gateway ("" before there is one)."""
        for c in self.children():
            if c.role == "gateway":
                argv = cmdline(c.pid)
                if "--redis-url" in argv:
                    return argv[argv.index("--redis-url") + 1]
        return ""

    def readyz(self) -> tuple[int, Any]:
        return http_json(f"{self.http}/readyz", timeout=2.0)

    def fully_ready(self) -> bool:
        """``/readyz`` 200 with every worker's slots registered."""
        code, body = self.readyz()
        return code == 200 and isinstance(body, dict) and body.get("slots", 0) >= self.total_slots

    def wait(self, predicate: Any, limit: float, poll: float = 0.25) -> float | None:
        """Seconds until ``predicate()`` held, or None after ``limit``."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if predicate():
                return time.monotonic() - started
            time.sleep(poll)
        return None

    def ctrl_c(self) -> None:
        """SIGINT to the whole process group, as Ctrl-C in its terminal."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGINT)

    def wait_exit(self, limit: float) -> int | None:
        """The exit code, or None if it still runs after ``limit`` seconds."""
        assert self.proc is not None
        try:
            return self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            return None

    def leftovers(self) -> list[dict[str, Any]]:
        """Processes of its process group still alive (after it exited)."""
        if self.proc is None:
            return []
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == self.proc.pid and alive(pid):
                    out.append({"pid": pid, "cmd": " ".join(cmdline(pid))[:200]})
        return out

    def kill_group(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, limit: float = 90.0) -> dict[str, Any]:
        """Ctrl-C, wait for the exit (then SIGKILL what is left); what happened."""
        if self.proc is None:
            return {}
        redis = [c.pid for c in self.children() if c.role == "redis"]
        started = time.monotonic()
        self.ctrl_c()
        code = self.wait_exit(limit)
        took = time.monotonic() - started
        left = self.leftovers()
        left += [{"pid": p, "cmd": "redis-server"} for p in redis if alive(p)]
        self.kill_group()
        for pid in redis:
            with contextlib.suppress(ProcessLookupError):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        if code is None:
            self.proc.wait(10)
        return {"exit_code": code, "exit_s": round(took, 2), "leftover_processes": left}

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
