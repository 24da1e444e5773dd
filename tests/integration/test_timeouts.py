"""Gateway timeouts, the decoder-lag limit and backpressure, with real processes.

Idle and maximum-duration timeouts run on the shared cluster. The lag and backpressure
tests own their Redis and their worker, because they stop them (SIGSTOP): a stopped
worker is a decoder that falls behind, deterministically; a stopped Redis is a store
the gateway cannot write to.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import websockets
from redis.asyncio import Redis

from gateway.app import serve
from harness.cluster import Cluster, free_port, start_worker, wait_for_workers
from harness.env import UNIT
from harness.speech import SENTENCE
from ksc.client import speech_url, stream
from shared import cluster
from shared.config import GatewaySettings
from shared.keys import Keys
from tests.integration.conftest import PREFIX

RAW = (
    "audio/x-raw, layout=(string)interleaved, rate=(int)16000, format=(string)S16LE, "
    "channels=(int)1"
)
OWN = "lagtest"
OWN_KEYS = Keys(OWN)


# --- idle and maximum duration, on the shared cluster ----------------------------------


@pytest.fixture
async def strict_gw(running: Cluster) -> AsyncIterator[Cluster]:
    settings = GatewaySettings(
        redis_url=running.redis_url,
        prefix=PREFIX,
        host="127.0.0.1",
        port=0,
        claim_timeout=10 * UNIT,
        idle_timeout=1.0 * UNIT,
        max_session_seconds=2.0 * UNIT,
    )
    async with serve(settings) as (gateway, port):
        yield Cluster(running.redis_url, gateway, port, running.workers)


async def test_idle_client_gets_status_2_and_close(strict_gw: Cluster) -> None:
    async with asyncio.timeout(20 * UNIT):
        async with websockets.connect(speech_url(strict_gw.ws)) as ws:
            messages = [m async for m in ws]  # the client sends nothing at all
        assert ws.close_code == 1000
    assert len(messages) == 1
    assert '"status": 2' in messages[0] and "No data received for 1 s" in messages[0]


async def test_http_upload_that_stalls_gets_408(strict_gw: Cluster) -> None:
    """A chunked upload that stops sending (but stays connected) is answered 408."""
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_gw.port)
    try:
        writer.write(
            b"PUT /client/dynamic/recognize HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: audio/x-raw\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % 16000
            + bytes(16000)
            + b"\r\n"
        )
        await writer.drain()
        async with asyncio.timeout(20 * UNIT):
            status = await reader.readline()
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read(4096)
    finally:
        writer.close()
    assert status.startswith(b"HTTP/1.1 408"), status
    assert b"application/json" in head and b"No data received for 1 s" in body


async def test_maximum_session_duration(strict_gw: Cluster, espeak_wav) -> None:
    """~6 s of speech sent in real time (never idle) outlasts a 2 s maximum."""
    wav = espeak_wav(SENTENCE).read_bytes()
    result = await stream(speech_url(strict_gw.ws), wav, realtime=True)
    assert result.status == 2
    assert "maximum duration of 2 s" in result.messages[-1]["message"]
    assert result.close_code == 1000


async def test_defaults_are_generous() -> None:
    s = GatewaySettings()
    assert (s.idle_timeout, s.max_session_seconds, s.max_decoder_lag) == (60.0, 7200.0, 30.0)
    assert s.max_backlog_seconds == 60.0 and s.queue_messages is False


# --- a Redis and a worker of our own, to stop --------------------------------------------


class Own:
    def __init__(self, redis_proc: subprocess.Popen[bytes], url: str) -> None:
        self.redis_proc = redis_proc
        self.url = url
        self.worker: subprocess.Popen[bytes] | None = None


@pytest.fixture(scope="module")
def own(prepared_model: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    binary = shutil.which("redis-server")
    assert binary is not None
    port = free_port()
    data = tmp_path_factory.mktemp("own-redis")
    redis_proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(data)],
        stdout=subprocess.DEVNULL,
    )
    o = Own(redis_proc, f"redis://127.0.0.1:{port}/0")
    deadline = time.monotonic() + 10 * UNIT
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout != (
        b"PONG\n"
    ):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    # A long lease: a stopped worker keeps its session (no takeover hides the lag).
    o.worker = start_worker(o.url, "lagw", prefix=OWN, lease=120.0)
    try:
        yield o
    finally:
        for proc in (o.worker, redis_proc):
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@asynccontextmanager
async def own_gateway(own: Own, **settings: float) -> AsyncIterator[tuple[Redis, int]]:
    redis = Redis.from_url(own.url)
    await wait_for_workers(redis, OWN_KEYS, 1)
    async with asyncio.timeout(30 * UNIT):  # the previous test's session has ended
        while sum(w.slots_free for w in await cluster.workers(redis, OWN_KEYS)) < 1:
            await asyncio.sleep(0.1)
    gw = GatewaySettings(
        redis_url=own.url, prefix=OWN, host="127.0.0.1", port=0, claim_timeout=20 * UNIT
    )
    try:
        async with serve(GatewaySettings(**{**gw.__dict__, **settings})) as (_, port):
            yield redis, port
    finally:
        await redis.aclose()


async def claimed_session(redis: Redis) -> str:
    """The sid of the session our worker decodes, once the gateway knows it is claimed
    (its first audio is on the stream: the gateway only reads audio after the claim)."""
    async with asyncio.timeout(20 * UNIT):
        while True:
            for raw in await redis.zrange(OWN_KEYS.live, 0, -1):
                meta = await redis.hgetall(OWN_KEYS.meta(raw.decode()))
                if meta.get(b"state") == b"decoding" and int(meta.get(b"audio_bytes", 0)) > 0:
                    return str(raw.decode())
            await asyncio.sleep(0.05)


@asynccontextmanager
async def stopped(proc: subprocess.Popen[bytes]) -> AsyncIterator[None]:
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


class Flood:
    """Sends raw PCM as fast as the server reads it; counts what the socket took."""

    def __init__(self, ws: websockets.ClientConnection, total: int, frame: int = 65536) -> None:
        self.sent = 0
        self.task = asyncio.create_task(self._run(ws, total, frame))

    async def _run(self, ws: websockets.ClientConnection, total: int, frame: int) -> None:
        # Silence: cheap for the decoder once it runs again. The client must not
        # compress (permessage-deflate would shrink it to almost nothing on the wire).
        block = bytes(frame)
        while self.sent < total:
            await ws.send(block)
            self.sent += frame

    async def stalled(self, quiet: float = 1.0 * UNIT) -> int:
        """Wait until nothing more is taken for ``quiet`` seconds; return the count."""
        async with asyncio.timeout(60 * UNIT):
            while True:
                before = self.sent
                await asyncio.sleep(quiet)
                if self.sent == before:
                    return before

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_decoder_falling_behind_ends_with_status_2(own: Own, espeak_wav) -> None:
    assert own.worker is not None
    wav = espeak_wav(SENTENCE).read_bytes()
    async with own_gateway(own, max_decoder_lag=2.0 * UNIT) as (redis, port):
        url = speech_url(f"ws://127.0.0.1:{port}")
        async with websockets.connect(url) as ws:
            await ws.send(wav[:32000])
            sid = await claimed_session(redis)
            async with stopped(own.worker):  # the decoder stops reading
                await ws.send(wav[32000:])  # ~6 s of speech, faster than real time
                async with asyncio.timeout(30 * UNIT):
                    messages = [m async for m in ws]
            assert ws.close_code == 1000
        assert '"status": 2' in messages[-1] and "behind real time" in messages[-1]
        # Resumed, the worker finds the session aborted, frees its slot and records it.
        async with asyncio.timeout(30 * UNIT):
            while await redis.hget(OWN_KEYS.meta(sid), "state") != b"failed":
                await asyncio.sleep(0.1)


async def test_redis_that_cannot_be_written_stops_the_reading(own: Own) -> None:
    """While Redis is stopped the gateway's XADD waits, and it reads nothing more from
    that socket: the client's sending stalls after what the TCP buffers hold, the
    gateway keeps answering everyone else, and the session goes on when Redis is back.
    """
    assert own.worker is not None
    total = 64 * 1024 * 1024
    async with own_gateway(own, max_decoder_lag=0, max_backlog_seconds=0) as (redis, port):
        url = speech_url(f"ws://127.0.0.1:{port}", RAW)
        async with websockets.connect(url, compression=None) as ws:
            await ws.send(bytes(16000))
            sid = await claimed_session(redis)
            async with stopped(own.worker), stopped(own.redis_proc):  # decoder too: no CPU
                flood = Flood(ws, total)
                stalled_at = await flood.stalled()
                # Kernel socket buffers on loopback hold a few MB; the gateway itself
                # holds at most the frame it is handling.
                assert stalled_at < 32 * 1024 * 1024
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        assert resp.status == 200
            # Redis is back: the XADD completes and reading resumes.
            async with asyncio.timeout(30 * UNIT):
                while flood.sent <= stalled_at:
                    await asyncio.sleep(0.05)
            await flood.stop()
        assert int(await redis.hget(OWN_KEYS.meta(sid), "audio_bytes") or 0) > 0


async def test_backlog_is_bounded_while_the_decoder_is_stopped(own: Own) -> None:
    """A client sending faster than its decoder reads is held back: the audio waiting
    in Redis stays under ``max_backlog_seconds`` (plus one frame)."""
    assert own.worker is not None
    backlog = 2.0
    async with own_gateway(own, max_decoder_lag=0, max_backlog_seconds=backlog) as (redis, port):
        url = speech_url(f"ws://127.0.0.1:{port}", RAW)
        async with websockets.connect(url, compression=None) as ws:
            await ws.send(bytes(16000))
            sid = await claimed_session(redis)
            meta = OWN_KEYS.meta(sid)
            async with stopped(own.worker):
                flood = Flood(ws, 64 * 1024 * 1024, frame=8000)
                await flood.stalled()
                held = int(await redis.hget(meta, "audio_bytes") or 0)
                assert held <= (backlog + 1.0) * 32000, held
            # The decoder reads again: so does the gateway.
            async with asyncio.timeout(30 * UNIT):
                while int(await redis.hget(meta, "audio_bytes") or 0) <= held:
                    await asyncio.sleep(0.05)
            await flood.stop()
