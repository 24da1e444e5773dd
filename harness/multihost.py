"""A cluster spread over network namespaces: one "host" per part, wired by a switch.

    kscmh-sw (bridge br0) ── p-redis ═ eth0 kscmh-redis   10.213.0.10  redis-server
                          ── p-gw    ═ eth0 kscmh-gw      10.213.0.20  ksc gateway :8888
                          ── p-wA    ═ eth0 kscmh-wA      10.213.0.31  ksc worker wA (1 slot)
                          ── p-wB    ═ eth0 kscmh-wB      10.213.0.32  ksc worker wB (1 slot)
                          ── p-client═ eth0 kscmh-client  10.213.0.40  the websocket client

Every part is a real process started with ``ip netns exec``; the addresses exist only
inside these namespaces (nothing is added to the root namespace), so all traffic stays
between them. Cutting a host's link (``ip link set p-HOST down`` in the switch) is an
unplugged cable: the host's own interface loses its carrier, its processes live on.

The helpers are plain classes so that ``scripts/multihost-demo`` runs the same scenario
as ``tests/multihost`` outside pytest. Namespaces with the ``kscmh-`` prefix left by an
earlier, killed run are removed first; the fixtures' finalizers stop every process and
remove the namespaces.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.env import REPO
from harness.media import sentences_pcm
from harness.speech import SENTENCES

NS_PREFIX = "kscmh-"
SWITCH = NS_PREFIX + "sw"
LOCK = "/run/lock/kscmh.lock"
SUBNET = "10.213.0"
HOSTS = {"redis": 10, "gw": 20, "wA": 31, "wB": 32, "client": 40}
WORKERS = ("wA", "wB")
KEY_PREFIX = "mh"
GATEWAY_PORT = 8888
LEASE_S = 2.0
SCALE = float(os.environ.get("KSC_TEST_TIMEOUT_SCALE", "1"))
CONTENT_TYPE = "audio/x-raw, rate=16000, format=S16LE"

# The client: raw PCM paced in real time in quarter seconds, then EOS; one JSON line per
# message with the (system-wide) monotonic time it arrived, then the close code.
CLIENT = """
import asyncio, json, sys, time
import websockets
from ksc.client import speech_url

def out(**fields):
    print(json.dumps({"t": time.monotonic(), **fields}, ensure_ascii=False), flush=True)

async def main(base, path, content_type):
    with open(path, "rb") as f:
        pcm = f.read()
    async with websockets.connect(speech_url(base, content_type), max_size=None) as ws:
        out(open=True)
        async def send():
            for i in range(0, len(pcm), 8000):
                await ws.send(pcm[i : i + 8000])
                await asyncio.sleep(0.25)
            await ws.send("EOS")
            out(eos=True)
        sender = asyncio.create_task(send())
        try:
            async for raw in ws:
                out(msg=json.loads(raw))
        finally:
            sender.cancel()
        out(close=ws.close_code)

asyncio.run(main(*sys.argv[1:4]))
"""

# Polls the gateway's /readyz from the client's host until it answers 200.
READY = """
import sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("gateway not ready: " + sys.argv[1])
    time.sleep(0.1)
"""


def run(*argv: str, check: bool = True, timeout: float = 30) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def ns(host: str) -> str:
    return NS_PREFIX + host


def addr(host: str) -> str:
    return f"{SUBNET}.{HOSTS[host]}"


def our_namespaces() -> list[str]:
    names = [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line]
    return [name for name in names if name.startswith(NS_PREFIX)]


def remove_namespace(name: str) -> None:
    """Kill what still runs inside one of our namespaces (all started by us), delete it."""
    for pid in run("ip", "netns", "pids", name, check=False).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    run("ip", "netns", "del", name, check=False)


class Network:
    """The switch namespace with a bridge, and one namespace per host plugged into it.

    The namespace names are fixed, so one network exists at a time: :meth:`create` holds
    an exclusive lock on :data:`LOCK` until :meth:`remove` (another run waits for it). A
    ``kscmh-`` namespace seen while holding the lock was left by a run that died.
    """

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self._lock: int | None = None

    @staticmethod
    def check_privilege() -> str | None:
        """Why namespaces cannot be made here, or None."""
        if os.geteuid() != 0:
            return "needs root (ip netns)"
        if shutil.which("ip") is None:
            return "iproute2 (ip) is not installed"
        probe = f"{NS_PREFIX}probe{os.getpid()}"
        done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if done.returncode != 0:
            return f"ip netns add failed: {done.stderr.strip()}"
        run("ip", "netns", "del", probe, check=False)
        return None

    def _add(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def create(self) -> None:
        self._lock = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        for name in our_namespaces():
            remove_namespace(name)
        self._add(SWITCH)
        run("ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", SWITCH, "link", "set", "br0", "up")
        for host in HOSTS:
            self._add(ns(host))
            port = f"p-{host}"
            # Both ends are born in their namespaces: nothing touches the root namespace.
            run(
                "ip",
                "-n",
                SWITCH,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns(host),
            )
            run("ip", "-n", SWITCH, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns(host), "addr", "add", f"{addr(host)}/24", "dev", "eth0")
            run("ip", "-n", ns(host), "link", "set", "eth0", "up")

    def cut(self, host: str) -> float:
        """Unplug the host's cable at the switch; returns the monotonic time of the cut."""
        run("ip", "-n", SWITCH, "link", "set", f"p-{host}", "down")
        return time.monotonic()

    def heal(self, host: str) -> float:
        run("ip", "-n", SWITCH, "link", "set", f"p-{host}", "up")
        return time.monotonic()

    def heal_all(self) -> None:
        for host in HOSTS:
            run("ip", "-n", SWITCH, "link", "set", f"p-{host}", "up", check=False)

    def remove(self) -> None:
        for name in reversed(self.namespaces):
            remove_namespace(name)
        self.namespaces.clear()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None


def argv_in(host: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns(host), *argv]


class Cluster:
    """redis-server, a gateway and two one-slot workers, each on its own host."""

    def __init__(self, net: Network, cache: Path, logs: Path) -> None:
        self.net = net
        self.cache = cache
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis_url = f"redis://{addr('redis')}:6379/0"
        self.ws = f"ws://{addr('gw')}:{GATEWAY_PORT}"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _spawn(self, name: str, host: str, *argv: str) -> None:
        with open(self.log(name), "wb") as out:
            self.procs[name] = subprocess.Popen(
                argv_in(host, *argv), stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )

    def redis_cli(self, *args: str) -> str:
        return run(*argv_in("redis", "redis-cli", "-h", addr("redis"), *args), timeout=10)

    def meta(self, sid: str, field: str) -> str:
        return self.redis_cli("HGET", f"{KEY_PREFIX}:{{{sid}}}:meta", field)

    def start(self) -> None:
        self._spawn(
            "redis",
            "redis",
            "redis-server",
            "--port",
            "6379",
            "--bind",
            addr("redis"),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            str(self.logs),
        )
        for wid in WORKERS:
            self._spawn(
                wid,
                wid,
                sys.executable,
                "-m",
                "ksc.cli",
                "worker",
                "--redis-url",
                self.redis_url,
                "--prefix",
                KEY_PREFIX,
                "--slots",
                "1",
                "--worker-id",
                wid,
                "--cache",
                str(self.cache),
                "--metrics-port",
                "0",
                "--lease",
                str(LEASE_S),
                "--log-level",
                "warning",
            )
        self._spawn(
            "gateway",
            "gw",
            sys.executable,
            "-m",
            "ksc.cli",
            "gateway",
            "--redis-url",
            self.redis_url,
            "--prefix",
            KEY_PREFIX,
            "--host",
            addr("gw"),
            "--port",
            str(GATEWAY_PORT),
            "--log-level",
            "warning",
        )

    def _until(self, what: str, ok: Callable[[], bool], limit: float) -> None:
        deadline = time.monotonic() + limit * SCALE
        while not ok():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = self.log(name).read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            time.sleep(0.1)

    def _answers(self, *args: str) -> str:
        try:
            return self.redis_cli(*args)
        except (RuntimeError, subprocess.TimeoutExpired):
            return ""

    def wait_ready(self) -> None:
        self._until("redis", lambda: self._answers("PING") == "PONG", 10)
        self.wait_slots_free(WORKERS, 90)
        run(
            *argv_in(
                "client",
                sys.executable,
                "-c",
                READY,
                f"http://{addr('gw')}:{GATEWAY_PORT}/readyz",
                str(30 * SCALE),
            ),
            timeout=40 * SCALE,
        )

    def wait_slots_free(self, workers: tuple[str, ...], limit: float = 30) -> None:
        def free() -> bool:
            key = f"{KEY_PREFIX}:worker:"
            return all(self._answers("HGET", key + w, "slots_free") == "1" for w in workers)

        self._until(f"free slots on {', '.join(workers)}", free, limit)

    def stop(self) -> dict[str, str]:
        """SIGTERM everything, SIGKILL what is still there after 10 s; how each ended."""
        ended: dict[str, str] = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
                ended[name] = f"exit {proc.returncode}"
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                ended[name] = "killed: did not stop on SIGTERM within 10 s"
        return ended


class ClientRun:
    """One session from the client's host; yields its lines as they arrive."""

    def __init__(self, cluster: Cluster, pcm: Path) -> None:
        self.cluster = cluster
        self.pcm = pcm
        self.proc: asyncio.subprocess.Process | None = None
        self.messages: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.close_code: int | None = None
        self.eos_at: float | None = None
        self.started = 0.0

    @property
    def sid(self) -> str:
        return str(self.messages[0]["id"])

    @property
    def finals(self) -> list[tuple[int, str]]:
        return [
            (m["segment"], m["result"]["hypotheses"][0]["transcript"])
            for m in self.messages
            if m.get("result", {}).get("final")
        ]

    async def start(self) -> None:
        self.started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *argv_in(
                "client", sys.executable, "-c", CLIENT, self.cluster.ws, str(self.pcm), CONTENT_TYPE
            ),
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
        )

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = json.loads(raw)
            if "msg" in line:
                self.messages.append(line["msg"])
                self.times.append(line["t"])
            elif "open" in line:
                self.started = line["t"]
            elif "eos" in line:
                self.eos_at = line["t"]
            elif "close" in line:
                self.close_code = line["close"]
            yield line
        assert await self.proc.wait() == 0, "the client failed"

    async def finish(self) -> None:
        async for _line in self.lines():
            pass

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


def timeline(run: ClientRun, marks: dict[float, str]) -> str:
    """One line per message (seconds since the socket opened), with marks in between."""
    lines = []
    pending = sorted(marks.items())
    for t, m in zip(run.times, run.messages, strict=True):
        while pending and pending[0][0] <= t:
            mark_t, text = pending.pop(0)
            lines.append(f"  {mark_t - run.started:6.2f}  ---- {text}")
        if "result" in m:
            kind = "final" if m["result"]["final"] else "partial"
            text = m["result"]["hypotheses"][0]["transcript"]
            lines.append(f"  {t - run.started:6.2f}  seg {m['segment']} {kind:7} {text}")
        else:
            lines.append(f"  {t - run.started:6.2f}  {json.dumps(m, ensure_ascii=False)}")
    lines += [f"  {t - run.started:6.2f}  ---- {text}" for t, text in pending]
    if run.close_code is not None:
        lines.append(f"          closed with code {run.close_code}")
    return "\n".join(lines)


@dataclass
class CutSession:
    """A session whose owner's cable was pulled at the first partial of segment 1."""

    run: ClientRun
    owner: str = ""
    cut_at: float = 0.0
    taken_over_at: float = 0.0  # when the record first showed the takeover (50 ms polls)

    @property
    def next_message_after_cut(self) -> float:
        later = [t for t in self.run.times if t > self.cut_at]
        return (later[0] if later else float("nan")) - self.cut_at

    def marks(self) -> dict[float, str]:
        marks = {self.cut_at: f"cable of {self.owner} pulled"}
        if self.taken_over_at:
            marks[self.taken_over_at] = "record shows the takeover"
        return marks


async def session_with_cut(cluster: Cluster, net: Network, pcm: Path) -> CutSession:
    cut = CutSession(ClientRun(cluster, pcm))

    async def watch_takeover() -> None:
        while await asyncio.to_thread(cluster.meta, cut.run.sid, "takeovers") != "1":
            await asyncio.sleep(0.05)
        cut.taken_over_at = time.monotonic()

    watcher: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(60 * SCALE):
            await cut.run.start()
            async for line in cut.run.lines():
                message: dict[str, Any] = line.get("msg", {})
                if message and not cut.owner:
                    cut.owner = await asyncio.to_thread(cluster.meta, message["id"], "owner")
                segment, result = message.get("segment"), message.get("result", {})
                if not cut.cut_at and segment == 1 and not result.get("final"):
                    cut.cut_at = net.cut(cut.owner)
                    watcher = asyncio.create_task(watch_takeover())
    finally:
        cut.run.kill()
        if watcher is not None:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
    return cut


def speech_pcm(out: Path) -> Path:
    """Three sentences (~12 s) as raw 16 kHz PCM: pauses end the first two segments, the
    last one is still open at EOS (as the failover tests' session)."""
    out.write_bytes(sentences_pcm(out.parent, SENTENCES))
    return out
