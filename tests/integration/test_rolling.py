"""A rolling restart of every process, one at a time, while sessions stream: none lost.

Two gateways and two workers (two slots each). Two clients stream real speech in real
time, session after session, each to the gateways in turn as a load balancer would.
Meanwhile every process is replaced, one at a time:

* a worker gets SIGTERM and a replacement is started at the same moment (as a
  Deployment's rolling update does): the old one stops claiming, finishes its running
  sessions and exits; the next process is touched once it has and the replacement
  has registered;
* a replacement gateway on a new port joins the clients' rotation, then an old one
  leaves it (its readiness turns false, which a load balancer acts on) and is stopped
  as SIGTERM stops it: it stops listening and lets its open sessions finish within
  the drain timeout.

"Loses no session" means: every session a client started ends with close 1000 and
exactly the reference finals — none missing, none twice — and no status message
(the gateways let a session wait for a slot, ``admission_wait``, so a worker
restarting shows as a short wait, never as status 9). A client that finds a gateway
closed tries the next one; that is a refused connection, not a session.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import wave
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.app import serve
from harness.cluster import start_worker, wait_for_workers
from harness.env import UNIT
from harness.speech import SENTENCES
from ksc.client import Transcript, speech_url, stream
from shared import cluster
from shared.config import GatewaySettings
from shared.keys import Keys

PREFIX = "rolling"
KEYS = Keys(PREFIX)
RAW = "audio/x-raw, rate=16000, format=S16LE"
CLIENTS = 2


class GatewayProc:
    """A gateway in this event loop, stopped as its SIGTERM handler stops it."""

    def __init__(self, redis_url: str) -> None:
        self.settings = GatewaySettings(
            redis_url=redis_url,
            prefix=PREFIX,
            host="127.0.0.1",
            port=0,
            admission_wait=60 * UNIT,
            drain_timeout=60 * UNIT,
        )
        self.stop = asyncio.Event()
        self.port = 0

    async def start(self) -> None:
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            async with serve(self.settings) as (_gateway, port):
                started.set_result(port)
                await self.stop.wait()

        self.task = asyncio.create_task(run())
        self.port = await started

    async def drain(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 90 * UNIT)


class Rolling:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.redis = Redis.from_url(redis_url)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.gateways: list[GatewayProc] = []
        self.count = 0

    def start_worker(self) -> str:
        self.count += 1
        wid = f"r{self.count}"
        self.workers[wid] = start_worker(self.redis_url, wid, slots=2, prefix=PREFIX)
        return wid

    async def registered(self, wid: str) -> None:
        async with asyncio.timeout(60 * UNIT):
            while wid not in {w.id for w in await cluster.workers(self.redis, KEYS)}:
                await asyncio.sleep(0.1)

    async def add_gateway(self) -> None:
        gw = GatewayProc(self.redis_url)
        await gw.start()
        self.gateways.append(gw)


@pytest.fixture
async def rolling(redis_server: str, prepared_model: object) -> AsyncIterator[Rolling]:
    r = Rolling(f"{redis_server}/0")
    await r.redis.delete(KEYS.sessions("ko"))
    r.start_worker()
    r.start_worker()
    await wait_for_workers(r.redis, KEYS, 2)
    await r.add_gateway()
    await r.add_gateway()
    yield r
    for gw in r.gateways:
        gw.stop.set()
    await asyncio.gather(*(gw.task for gw in r.gateways), return_exceptions=True)
    for proc in r.workers.values():
        proc.terminate()
    for proc in r.workers.values():
        try:
            await asyncio.to_thread(proc.wait, 45 * UNIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    await r.redis.aclose()


@pytest.fixture(scope="module")
def speech(espeak_wav) -> bytes:  # type: ignore[no-untyped-def]
    """Two sentences (~8 s) with a pause between them: two finals."""
    pcm = b""
    for text in SENTENCES[1:]:
        with wave.open(str(espeak_wav(text))) as w:
            pcm += w.readframes(w.getnframes()) + bytes(2 * 16000)
    return pcm


async def test_rolling_restart_loses_no_session(
    rolling: Rolling, speech: bytes, reference_decode
) -> None:  # type: ignore[no-untyped-def]
    expected = [(f.segment, f.text) for f in reference_decode(speech)]
    assert len(expected) >= 2
    sessions: list[Transcript] = []
    refused = 0
    done = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal refused
        turn = n
        while not done.is_set():
            gateways = list(rolling.gateways)
            gw = gateways[turn % len(gateways)]
            turn += 1
            try:
                result = await stream(speech_url(f"ws://127.0.0.1:{gw.port}", RAW), speech)
            except OSError:
                refused += 1  # that gateway stopped listening: try the next one
                continue
            sessions.append(result)

    clients = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
    await asyncio.sleep(2 * UNIT)  # sessions under way on both workers
    for old in list(rolling.workers):
        # As a Deployment's rolling update does: the replacement starts as the old one
        # gets SIGTERM; the next process is touched once both are through.
        proc = rolling.workers.pop(old)
        proc.send_signal(signal.SIGTERM)
        new = rolling.start_worker()
        code = await asyncio.to_thread(proc.wait, 90 * UNIT)
        assert code == 0, f"worker {old} exited with {code}"
        await rolling.registered(new)
    for old_gw in list(rolling.gateways):
        await rolling.add_gateway()
        rolling.gateways.remove(old_gw)  # readiness false: out of the rotation
        await old_gw.drain()
    await asyncio.sleep(1 * UNIT)
    done.set()
    await asyncio.gather(*clients)

    got = [
        [(f["segment"], f["result"]["hypotheses"][0]["transcript"]) for f in s.finals]
        for s in sessions
    ]
    bad = [
        (g, s.close_code, s.status)
        for g, s in zip(got, sessions, strict=True)
        if g != expected or s.close_code != 1000 or s.status != 0
    ]
    print(f"rolling restart: {len(sessions)} sessions, {len(bad)} lost, {refused} refused connects")
    assert len(sessions) >= 4
    assert not bad, bad
    takeovers = 0
    for s in sessions:
        raw = await rolling.redis.hget(KEYS.meta(s.messages[0]["id"]), "takeovers")
        takeovers += int(raw or 0)
    assert takeovers == 0, "a SIGTERM drain finishes sessions, it does not hand them over"
