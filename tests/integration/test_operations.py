"""Operating the cluster: metrics, health probes, graceful drain of both roles."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from contextlib import suppress

import aiohttp
import pytest
import websockets

from gateway.app import serve
from gateway.state import Gateway
from harness.cluster import KSC, Cluster, free_port, start_worker, wait_for_workers
from harness.env import UNIT
from harness.speech import SENTENCE, assert_well_formed
from ksc.client import speech_url, stream
from shared.config import GatewaySettings
from shared.keys import Keys
from tests.integration.conftest import METRICS_PORTS, PREFIX


def ksc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KSC, *args], capture_output=True, text=True, timeout=60)


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_metrics(running: Cluster, espeak_wav) -> None:
    await stream(speech_url(running.ws), espeak_wav(SENTENCE).read_bytes(), realtime=False)
    gateway = await get_text(f"{running.http}/metrics")
    assert "ksc_gateway_sessions_active 0.0" in gateway
    worker_text = ""
    for port in METRICS_PORTS.values():
        worker_text += await get_text(f"http://127.0.0.1:{port}/metrics")
    assert "ksc_worker_slots_total 1.0" in worker_text
    assert 'ksc_worker_sessions_total{outcome="done"}' in worker_text
    assert "ksc_worker_decode_rtf_count" in worker_text


async def test_health_probes(running: Cluster, redis_server: str) -> None:
    ok = await asyncio.to_thread(ksc, "check", "gateway", "--url", running.http)
    assert ok.returncode == 0, ok.stderr
    common = ["--redis-url", f"{redis_server}/0", "--prefix", PREFIX]
    ok = await asyncio.to_thread(ksc, "check", "worker", *common, "--worker-id", "w1")
    assert ok.returncode == 0, ok.stderr
    bad = await asyncio.to_thread(ksc, "check", "worker", *common, "--worker-id", "nope")
    assert bad.returncode == 1 and "no fresh heartbeat" in bad.stderr
    bad = await asyncio.to_thread(
        ksc, "check", "gateway", "--url", f"http://127.0.0.1:{free_port()}"
    )
    assert bad.returncode == 1


async def test_worker_sigterm_finishes_the_running_session(redis_server: str, espeak_wav) -> None:
    """SIGTERM mid-session: the worker stops claiming, finishes the session, then exits."""
    url, prefix = f"{redis_server}/0", "drain-worker"
    from redis.asyncio import Redis

    redis = Redis.from_url(url)
    worker = start_worker(url, "dw", prefix=prefix)
    try:
        await wait_for_workers(redis, Keys(prefix), 1)
        settings = GatewaySettings(redis_url=url, prefix=prefix, host="127.0.0.1", port=0)
        async with serve(settings) as (_gateway, port):
            session = asyncio.create_task(
                stream(speech_url(f"ws://127.0.0.1:{port}"), espeak_wav(SENTENCE).read_bytes())
            )
            await asyncio.sleep(3 * UNIT)  # mid-session, real-time pacing
            worker.send_signal(signal.SIGTERM)
            result = await session
            assert_well_formed(result.messages)
            assert result.finals and result.close_code == 1000
            code = await asyncio.to_thread(worker.wait, 30 * UNIT)
            assert code == 0
            assert await redis.exists(Keys(prefix).worker("dw")) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        await redis.aclose()


async def _accepts(host: str, port: int) -> bool:
    """Whether a TCP connection to the port is accepted (the listener is open)."""
    try:
        _reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return True


async def test_gateway_drain(running: Cluster, espeak_wav) -> None:
    """A draining gateway is not ready, refuses new connections, lets sessions finish."""
    settings = GatewaySettings(
        redis_url=running.redis_url, prefix=PREFIX, host="127.0.0.1", port=0, drain_timeout=60
    )
    stop = asyncio.Event()
    started: asyncio.Future[tuple[Gateway, int]] = asyncio.get_running_loop().create_future()

    async def run_gateway() -> None:
        async with serve(settings) as (gateway, port):
            started.set_result((gateway, port))
            await stop.wait()

    server = asyncio.create_task(run_gateway())
    gateway, port = await started
    base = f"ws://127.0.0.1:{port}"
    session = asyncio.create_task(stream(speech_url(base), espeak_wav(SENTENCE).read_bytes()))
    async with asyncio.timeout(10 * UNIT):
        while not gateway.sessions:
            await asyncio.sleep(0.05)
    stop.set()  # as SIGTERM does
    async with asyncio.timeout(10 * UNIT):
        while gateway.ready or await _accepts("127.0.0.1", port):
            await asyncio.sleep(0.02)
    assert not server.done(), "the open session keeps the gateway draining"
    with pytest.raises(OSError):
        await websockets.connect(speech_url(base))
    result = await session
    assert_well_formed(result.messages)
    assert result.finals and result.close_code == 1000
    await asyncio.wait_for(server, 10 * UNIT)


async def test_drain_timeout_closes_with_service_restart(running: Cluster, espeak_wav) -> None:
    settings = GatewaySettings(
        redis_url=running.redis_url, prefix=PREFIX, host="127.0.0.1", port=0, drain_timeout=0.5
    )
    wav = espeak_wav(SENTENCE).read_bytes()
    async with serve(settings) as (gateway, port):
        ws = await websockets.connect(speech_url(f"ws://127.0.0.1:{port}"))
        await ws.send(wav[:16000])
        async with asyncio.timeout(10 * UNIT):
            while not gateway.sessions:
                await asyncio.sleep(0.05)
    # The block exited: drain ran out after 0.5 s with the client still streaming.
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await ws.recv()
    assert ws.close_code == 1012


async def test_ksc_transcribe_writes_subtitles(running: Cluster, espeak_wav, tmp_path) -> None:
    wav = espeak_wav(SENTENCE)
    out = tmp_path / "out.srt"
    done = await asyncio.to_thread(
        ksc, "transcribe", "--url", running.ws, "--format", "srt", "-o", str(out), str(wav)
    )
    assert done.returncode == 0, done.stderr
    cues = out.read_text(encoding="utf-8").strip().split("\n\n")
    assert cues and cues[0].startswith("1\n00:00:")
    assert " --> " in cues[0].splitlines()[1] and cues[0].splitlines()[2]


async def test_ksc_transcribe_exit_codes(running: Cluster, tmp_path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 100)
    bad = await asyncio.to_thread(ksc, "transcribe", "--url", running.ws, str(garbage))
    assert bad.returncode == 1 and "status 5" in bad.stderr
    missing = await asyncio.to_thread(ksc, "transcribe", "--url", running.ws, "/nonexistent.wav")
    assert missing.returncode == 4
    nowhere = f"ws://127.0.0.1:{free_port()}"
    gone = await asyncio.to_thread(ksc, "transcribe", "--url", nowhere, str(garbage))
    assert gone.returncode == 3 and "cannot reach" in gone.stderr


async def test_ksc_status(running: Cluster, redis_server: str) -> None:
    table = await asyncio.to_thread(
        ksc, "status", "--redis-url", f"{redis_server}/0", "--prefix", PREFIX
    )
    assert table.returncode == 0, table.stderr
    assert "workers: 2" in table.stdout and "SLOTS FREE/TOTAL" in table.stdout
    assert f"XINFO GROUPS {PREFIX}:sessions:MODEL" in table.stdout
    as_json = await asyncio.to_thread(ksc, "status", "--url", running.http, "--json")
    snap = json.loads(as_json.stdout)
    assert sorted(w["id"] for w in snap["workers"]) == ["w1", "w2"]
    assert all(w["slots_total"] == 1 and w["models"] == ["ko"] for w in snap["workers"])
    assert snap["sessions"] == [] and snap["requests_processed"] >= 0
