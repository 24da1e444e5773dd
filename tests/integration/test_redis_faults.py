"""Redis faults with real processes: restarts (with and without its data), a Sentinel
failover, a Redis Cluster with a worker killed mid-session.

Each test runs its own redis-server processes on free loopback ports (never the
session's shared one), its own worker processes (``--lease 2``) and an in-process
gateway. Sessions stream three sentences in real time; the transcript of a session
that met a fault must equal the no-fault run's, each segment number sent once.
Numbers are printed (``-s``) for ``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.app import Gateway, serve
from harness.cluster import cluster_port, free_port, start_worker, stop, wait_for_workers
from harness.env import UNIT
from harness.failover import finals, run_session
from harness.speech import SENTENCE, SENTENCES, assert_well_formed
from ksc.client import Transcript, speech_url, stream
from shared import cluster, records, redis_client
from shared.config import GatewaySettings
from shared.keys import Keys

PREFIX = "faults"
KEYS = Keys(PREFIX)
PASSWORD = "s3cret"


# --- redis-server processes --------------------------------------------------------------


class Server:
    """One redis-server (or sentinel) process on a fixed port, restartable in place."""

    def __init__(self, folder: Path, port: int, *args: str, conf: str = "") -> None:
        self.folder, self.port, self.args, self.conf = folder, port, args, conf
        self.password = ""
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> Server:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        if self.conf:
            path = self.folder / "sentinel.conf"
            path.write_text(self.conf)
            argv = [binary, str(path), "--sentinel"]
        else:
            argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            argv += ["--dir", str(self.folder), *self.args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, cwd=self.folder)
        deadline = time.monotonic() + 10 * UNIT
        while not self.ping():
            assert time.monotonic() < deadline, f"redis-server on {self.port} did not start"
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        argv = ["redis-cli", "-p", str(self.port), "--no-auth-warning", "ping"]
        if self.password:
            argv[1:1] = ["-a", self.password]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        return done.stdout.strip() == "PONG"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Processes:
    """Everything a test started; stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def server(self, server: Server) -> Server:
        self.servers.append(server)
        return server.start()

    def worker(self, url: str, wid: str) -> None:
        self.workers[wid] = start_worker(url, wid, prefix=PREFIX, lease=2.0)

    def kill_worker(self, wid: str) -> None:
        proc = self.workers.pop(wid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        stop(*self.workers.values())
        for server in reversed(self.servers):
            server.stop()


@pytest.fixture
def procs(prepared_model: object) -> Iterator[Processes]:
    p = Processes()
    yield p
    p.close()


@pytest.fixture(scope="module")
def speech(espeak_wav: Callable[..., Path]) -> bytes:
    """The failover test's three sentences (~13 s): two closed by pauses, one by EOS."""
    pcm = b""
    for i, text in enumerate(SENTENCES):
        with wave.open(str(espeak_wav(text, pad=False))) as w:
            pause = 0.2 if i == len(SENTENCES) - 1 else 1.5
            pcm += bytes(2 * 4800) + w.readframes(w.getnframes()) + bytes(int(2 * 16000 * pause))
    return pcm


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return {}


@asynccontextmanager
async def gateway(url: str, workers: int) -> AsyncIterator[tuple[Gateway, int]]:
    redis = redis_client.connect(url)
    try:
        await wait_for_workers(redis, KEYS, workers)
    finally:
        await redis.aclose()
    settings = GatewaySettings(
        redis_url=url, prefix=PREFIX, host="127.0.0.1", port=0, claim_timeout=20 * UNIT
    )
    async with serve(settings) as served:
        yield served


async def expected(port: int, speech: bytes, reference: dict[str, Any]) -> list[tuple[int, str]]:
    """The no-fault transcript of ``speech`` (decoded once per module)."""
    if "finals" not in reference:
        clean = await run_session(port, speech)
        assert_well_formed(clean.messages)
        assert len(clean.finals) == len(SENTENCES) and clean.close_code == 1000
        reference["finals"] = finals(clean)
    return list(reference["finals"])


async def readyz(port: int) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/readyz") as resp,
    ):
        return resp.status


async def new_session_works(port: int, espeak_wav: Callable[..., Path]) -> None:
    """After the fault: a fresh session, not paced, gets its finals and a clean close."""
    result = await stream(
        speech_url(f"ws://127.0.0.1:{port}"), espeak_wav(SENTENCE).read_bytes(), realtime=False
    )
    assert_well_formed(result.messages)
    assert result.finals and result.close_code == 1000


def first_partial_of(segment: int) -> Callable[[dict[str, Any]], bool]:
    def hit(message: dict[str, Any]) -> bool:
        result = message.get("result", {})
        return bool(result) and not result["final"] and message["segment"] == segment

    return hit


async def with_fault(
    port: int,
    speech: bytes,
    when: Callable[[dict[str, Any]], bool],
    fault: Callable[[], Any],
) -> tuple[Transcript, float]:
    """Run a session; the first message ``when`` accepts triggers ``fault`` (once).

    Returns the transcript and the seconds from the fault's end to the next message.
    """
    fired: list[float] = []
    after: list[float] = []

    async def on_message(message: dict[str, Any]) -> None:
        if fired and not after:
            after.append(time.monotonic())
        if not fired and when(message):
            await fault()
            fired.append(time.monotonic())

    result = await run_session(port, speech, on_message=on_message)
    assert fired, "the fault happened"
    return result, (after[0] if after else time.monotonic()) - fired[0]


# --- a restart with the data kept (AOF) ------------------------------------------------


async def test_restart_with_aof_session_survives(
    procs: Processes, tmp_path: Path, speech: bytes, reference: dict[str, Any]
) -> None:
    port = free_port()
    server = procs.server(
        Server(tmp_path / "aof", port, "--appendonly", "yes", "--appendfsync", "always")
    )
    url = f"redis://127.0.0.1:{port}/0"
    procs.worker(url, "a1")
    async with gateway(url, 1) as (gw, gw_port):
        want = await expected(gw_port, speech, reference)
        outage: dict[str, float] = {}

        async def restart() -> None:
            server.kill()
            down = time.monotonic()
            await asyncio.sleep(1.0 * UNIT)  # down long enough for every loop to notice
            outage["readyz"] = await readyz(gw_port)
            await asyncio.to_thread(server.start)
            outage["down"] = time.monotonic() - down

        result, recovered = await with_fault(gw_port, speech, first_partial_of(1), restart)
        assert_well_formed(result.messages)
        assert finals(result) == want
        assert result.close_code == 1000
        assert outage["readyz"] == 503, "not ready while Redis is down"
        async with asyncio.timeout(10 * UNIT):
            while await readyz(gw_port) != 200:
                await asyncio.sleep(0.1)
        assert gw.hub.reconnects >= 1
        print(
            f"aof restart: Redis down {outage['down']:.2f} s; next message "
            f"{recovered:.2f} s after it was back; {len(result.finals)} finals, 0 lost"
        )


# --- a restart that loses everything ------------------------------------------------------


async def test_restart_without_data_ends_session_clearly(
    procs: Processes, tmp_path: Path, speech: bytes, espeak_wav: Callable[..., Path]
) -> None:
    port = free_port()
    server = procs.server(Server(tmp_path / "volatile", port, "--save", "", "--appendonly", "no"))
    url = f"redis://127.0.0.1:{port}/0"
    procs.worker(url, "v1")
    async with gateway(url, 1) as (_gw, gw_port):

        async def wipe() -> None:
            server.kill()
            await asyncio.to_thread(server.start)

        started = time.monotonic()
        async with asyncio.timeout(60 * UNIT):  # not a hang
            result, _ = await with_fault(gw_port, speech, first_partial_of(1), wipe)
        ended = time.monotonic() - started
        assert result.status == 2, result.messages[-1]
        assert result.messages[-1]["message"] == records.DATA_LOST
        assert result.close_code == 1000
        assert [f["segment"] for f in result.finals] == [0]
        # Both processes carry on: the worker registers again, the group is recreated.
        redis = redis_client.connect(url)
        try:
            async with asyncio.timeout(20 * UNIT):
                while await cluster.free_slots(redis, KEYS, "ko") < 1:
                    await asyncio.sleep(0.1)
            slot_free = time.monotonic() - started
        finally:
            await redis.aclose()
        await new_session_works(gw_port, espeak_wav)
        print(
            f"restart without data: status 2 after {ended:.1f} s, "
            f"slot free again after {slot_free:.1f} s"
        )


# --- Sentinel: the master dies mid-session --------------------------------------------


def sentinel_conf(port: int, master_port: int) -> str:
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 2",
            f"sentinel auth-pass mymaster {PASSWORD}",
            "sentinel down-after-milliseconds mymaster 1000",
            "sentinel failover-timeout mymaster 3000",
            f"requirepass {PASSWORD}",
            f"sentinel sentinel-pass {PASSWORD}",
            "",
        ]
    )


async def test_sentinel_failover(
    procs: Processes,
    tmp_path: Path,
    speech: bytes,
    reference: dict[str, Any],
    espeak_wav: Callable[..., Path],
) -> None:
    auth = ["--requirepass", PASSWORD, "--masterauth", PASSWORD, "--save", ""]
    master_port, replica_port = free_port(), free_port()
    master = Server(tmp_path / "master", master_port, *auth)
    master.password = PASSWORD
    procs.server(master)
    replica = Server(
        tmp_path / "replica", replica_port, *auth, "--replicaof", "127.0.0.1", str(master_port)
    )
    replica.password = PASSWORD
    procs.server(replica)
    sentinel_ports = [free_port() for _ in range(3)]
    for i, sp in enumerate(sentinel_ports):
        s = Server(tmp_path / f"sentinel{i}", sp, conf=sentinel_conf(sp, master_port))
        s.password = PASSWORD
        procs.server(s)
    hosts = ",".join(f"127.0.0.1:{sp}" for sp in sentinel_ports)
    url = f"redis+sentinel://:{PASSWORD}@{hosts}/mymaster/0"
    probe = redis_client.connect(url)
    procs.worker(url, "s1")
    try:
        async with gateway(url, 1) as (_gw, gw_port):
            want = await expected(gw_port, speech, reference)
            killed: list[float] = []

            promoted: list[float] = []

            async def watch_failover() -> None:
                sentinel = Redis(port=sentinel_ports[0], password=PASSWORD)
                try:
                    while True:
                        addr = await sentinel.sentinel_get_master_addr_by_name("mymaster")
                        if int(addr[1]) == replica_port:
                            promoted.append(time.monotonic())
                            return
                        await asyncio.sleep(0.1)
                finally:
                    await sentinel.aclose()

            watcher: list[asyncio.Task[None]] = []

            async def kill_master() -> None:
                await probe.wait(1, 5000)  # WAIT: the replica has everything so far
                master.kill()
                killed.append(time.monotonic())
                watcher.append(asyncio.create_task(watch_failover()))

            result, recovered = await with_fault(gw_port, speech, first_partial_of(1), kill_master)
            await asyncio.wait_for(watcher[0], 30 * UNIT)
            assert_well_formed(result.messages)
            assert finals(result) == want
            assert result.close_code == 1000
            sid = result.messages[0]["id"]
            resumed = int(await probe.hget(KEYS.meta(sid), "takeovers") or 0)
            await new_session_works(gw_port, espeak_wav)
            print(
                f"sentinel failover: replica promoted {promoted[0] - killed[0]:.1f} s after "
                f"the kill; next message {recovered:.1f} s after it; resumed {resumed} times; "
                f"{len(result.finals)} finals, 0 lost"
            )
    finally:
        await probe.aclose()


# --- Redis Cluster: sessions end to end, and a takeover --------------------------------


async def owner_of_live_session(redis: Redis) -> str:
    async with asyncio.timeout(20 * UNIT):
        while True:
            for raw in await redis.zrange(KEYS.live, 0, -1):
                owner = await redis.hget(KEYS.meta(raw.decode()), "owner")
                if owner:
                    return str(owner.decode())
            await asyncio.sleep(0.02)


async def test_cluster_session_and_takeover(
    procs: Processes, tmp_path: Path, speech: bytes, reference: dict[str, Any]
) -> None:
    ports = [cluster_port() for _ in range(3)]
    for port in ports:
        procs.server(
            Server(
                tmp_path / f"node{port}",
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
            )
        )
    create = subprocess.run(
        [
            "redis-cli",
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert create.returncode == 0, create.stdout + create.stderr
    deadline = time.monotonic() + 20 * UNIT
    for port in ports:
        while (
            "cluster_state:ok"
            not in subprocess.run(
                ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True
            ).stdout
        ):
            assert time.monotonic() < deadline, "cluster did not converge"
            await asyncio.sleep(0.1)
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    procs.worker(url, "c1")
    procs.worker(url, "c2")
    probe = redis_client.connect(url)
    try:
        async with gateway(url, 2) as (_gw, gw_port):
            want = await expected(gw_port, speech, reference)

            async def kill_owner() -> None:
                procs.kill_worker(await owner_of_live_session(probe))

            result, recovered = await with_fault(gw_port, speech, first_partial_of(1), kill_owner)
            assert_well_formed(result.messages)
            assert finals(result) == want
            assert result.close_code == 1000
            sid = result.messages[0]["id"]
            assert await probe.hget(KEYS.meta(sid), "takeovers") == b"1"
            print(f"cluster takeover: first message {recovered:.2f} s after the kill")
    finally:
        await probe.aclose()
