"""The images, run as the chart runs them: read-only root, uid 10001, no capabilities.

One cluster of containers for the module (``pods`` in conftest.py): Redis, two decoder
workers, a gateway and the batch worker, each from its rendered pod spec. The tests run
in file order and the last one takes the gateway down, as a rolling update would.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from redis.asyncio import Redis

from harness.env import UNIT
from harness.failover import finals, run_session
from harness.media import pcm_of
from harness.pods import heartbeat
from harness.speech import FRAME, assert_well_formed
from ksc.client import Transcript, speech_url, stream
from shared import cluster
from shared.keys import Keys
from tests.containers.conftest import PREFIX, Pods

# Image builds on a fresh machine happen in the first test's setup.
pytestmark = pytest.mark.timeout(900 * UNIT)

KEYS = Keys(PREFIX)
#: Every module of the venv has bytecode, and it is unchecked-hash bytecode (flags 1 in
#: the header): Python loads it without looking at the source's mtime.
BYTECODE_CHECK = """
import importlib.util, os, pathlib, sys
def ok(py):
    pyc = importlib.util.cache_from_source(py)
    if not os.path.exists(pyc):
        return False
    with open(pyc, 'rb') as f:
        return int.from_bytes(f.read(8)[4:], 'little') == 1
py = [str(p) for p in pathlib.Path(sys.prefix).rglob('*.py')]
missing = [p for p in py if not ok(p)]
print(len(py), len(missing), missing[:5])
"""


def expected(reference_decode: Any, clip: Path) -> list[tuple[int, str]]:
    return [(f.segment, f.text) for f in reference_decode(pcm_of(clip))]


@pytest.fixture(scope="module")
def clips(testdata: Path) -> dict[str, Path]:
    found = {p.name: p for p in (testdata / "clips").glob("*.wav")}
    return {
        "short-1": found["emotts_ada00003.wav"],  # 7.0 s
        "short-2": found["emotts_adc00002.wav"],  # 7.9 s
        "long-1": found["emotts_ava00001.wav"],  # 10.8 s
        "long-2": found["emotts_avc00003.wav"],  # 9.5 s
    }


async def test_containers_run_as_the_chart_says(pods: Pods) -> None:
    """Non-root, read-only root, no capabilities, no new privileges: checked from the
    container's own view (/proc/1/status), not only from podman's configuration."""
    for pod in [pods.redis, *pods.workers, pods.gateway, pods.batch]:
        status = (await asyncio.to_thread(pod.exec, "cat", "/proc/1/status")).stdout
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["Uid"].split()[:2] == ["10001", "10001"], pod.name
        assert fields["Gid"].split()[:2] == ["10001", "10001"], pod.name
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0, pod.name
        assert fields["NoNewPrivs"].strip() == "1", pod.name
        probe = await asyncio.to_thread(pod.exec, "sh", "-c", "echo x > /probe-write")
        assert "Read-only file system" in probe.stderr, pod.name
        # Nothing the pods ran tried to write under the root.
        assert "Read-only file system" not in await asyncio.to_thread(pod.logs), pod.name


async def test_bytecode_compiled_at_build_time(pods: Pods) -> None:
    for pod in (pods.workers[0], pods.gateway):
        out = await asyncio.to_thread(pod.exec, "python", "-c", BYTECODE_CHECK)
        total, missing, examples = out.stdout.split(" ", 2)
        assert int(total) > 500 and int(missing) == 0, (pod.name, examples)


async def test_worker_probes_pass_within_their_timeouts(pods: Pods) -> None:
    """The chart's startup/readiness probe (exec ``ksc check worker``) and liveness
    probe (GET /healthz on the metrics port), run as the kubelet runs them."""
    for pod in pods.workers:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = pod.main[kind]
            start = time.monotonic()
            assert await asyncio.to_thread(pod.probe, kind), (pod.name, kind)
            took = time.monotonic() - start
            assert took < spec["timeoutSeconds"], (pod.name, kind, took)
            print(f"{pod.name} {kind}: {took:.2f} s (timeout {spec['timeoutSeconds']} s)")
        command = pod.main["readinessProbe"]["exec"]["command"]
        code, cpu = await asyncio.to_thread(pod.cpu, *command)
        assert code == 0
        print(f"{pod.name} `{' '.join(command)}`: {cpu:.2f} CPU-s")


async def test_speech_through_the_gateway_container_equals_direct_decode(
    pods: Pods, clips: dict[str, Path], reference_decode: Any
) -> None:
    for name in ("short-1", "short-2"):
        clip = clips[name]
        result = await stream(speech_url(pods.ws), clip.read_bytes(), realtime=False)
        assert_well_formed(result.messages)
        assert finals(result) == expected(reference_decode, clip), name
        assert result.close_code == 1000


async def test_batch_job_runs_on_the_batch_worker_container(
    pods: Pods, clips: dict[str, Path], reference_decode: Any
) -> None:
    clip = clips["short-1"]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{pods.http}/v1/transcriptions", data=clip.read_bytes()) as resp:
            assert resp.status == 202, await resp.text()
            job = (await resp.json())["id"]
        async with asyncio.timeout(120 * UNIT):
            while True:
                async with http.get(f"{pods.http}/v1/transcriptions/{job}") as resp:
                    doc = await resp.json()
                if doc["state"] in ("finished", "failed"):
                    break
                await asyncio.sleep(0.2)
    assert doc["state"] == "finished", doc
    assert [(s["segment"], s["text"]) for s in doc["segments"]] == expected(reference_decode, clip)


async def test_kill_9_of_the_owning_worker_container_moves_the_session(
    pods: Pods, clips: dict[str, Path], reference_decode: Any
) -> None:
    """kill -9 the container decoding a live session (the other one is up): the session
    ends on the other, complete, its finals numbered without a gap or a repeat. Then
    the container restarts in place, as the kubelet restarts it, and is ready again."""
    clip = clips["long-1"]
    redis = Redis.from_url(pods.redis_url)
    try:
        live = {w.id for w in await cluster.workers(redis, KEYS)}
        assert live == {p.name for p in pods.workers}, "both decoders are up"
        killed: list[tuple[float, str]] = []
        taken: list[float] = []  # when the session's record shows the takeover
        after: list[float] = []  # the first message the client got after that

        async def watch(sid: str) -> None:
            while await redis.hget(KEYS.meta(sid), "takeovers") is None:
                await asyncio.sleep(0.02)
            taken.append(time.monotonic())

        watching: list[asyncio.Task[None]] = []

        async def on_message(message: dict[str, Any]) -> None:
            if taken and not after:
                after.append(time.monotonic())
            if not killed and not message["result"]["final"]:
                owner = await redis.hget(KEYS.meta(message["id"]), "owner")
                assert owner, "a partial comes from a claimed session"
                victim = pods.worker(owner.decode())
                await asyncio.to_thread(victim.kill, "KILL")
                killed.append((time.monotonic(), victim.name))
                watching.append(asyncio.create_task(watch(message["id"])))

        result = await run_session(pods.ports[8888], pcm_of(clip), on_message=on_message)
        assert killed, "the owner was killed"
        await asyncio.wait_for(watching[0], 10 * UNIT)
        sid = result.messages[0]["id"]
        assert await redis.hget(KEYS.meta(sid), "takeovers") == b"1", "another worker took over"
        assert_well_formed(result.messages)
        assert finals(result) == expected(reference_decode, clip)
        assert result.close_code == 1000
        moment, name = killed[0]
        print(
            f"kill -9 of {name}: takeover recorded after {taken[0] - moment:.2f} s, "
            f"the client's next message after {(after or [float('nan')])[0] - moment:.2f} s"
        )

        victim = pods.worker(name)
        assert victim.state()["ExitCode"] == 137
        await asyncio.to_thread(victim.restart)
        hint = heartbeat(pods.redis_url, victim)
        took = await asyncio.to_thread(victim.wait_ready, 300 * UNIT, 0.5, hint)
        print(f"{name} restarted, ready in {took:.1f} s")
    finally:
        await redis.aclose()


async def test_sigterm_to_the_gateway_drains_the_open_session(
    pods: Pods, clips: dict[str, Path], reference_decode: Any
) -> None:
    """The kubelet's deletion of the gateway pod (preStop, then SIGTERM) while a session
    is open: the session finishes normally, then the gateway exits 0 within its grace
    period (docs/reliability.md, "Drain and rolling restart"). The client holds its EOS
    until SIGTERM has been sent, so the signal lands mid-session however slow the
    preStop hook's exec is on a loaded machine."""
    clip = clips["long-2"]
    gateway = pods.gateway
    pcm = pcm_of(clip)
    url = speech_url(pods.ws, "audio/x-raw, rate=16000, format=S16LE")
    result = Transcript()
    stopping: list[asyncio.Task[int]] = []
    async with asyncio.timeout(180 * UNIT), websockets.connect(url) as ws:

        async def send() -> None:
            for i in range(0, len(pcm), FRAME):
                await ws.send(pcm[i : i + FRAME])
                await asyncio.sleep(0.25)
                if not stopping:  # one frame in: the session is open
                    stopping.append(asyncio.create_task(asyncio.to_thread(gateway.terminate)))
            while gateway.signalled is None and not stopping[0].done():
                await asyncio.sleep(0.05)
            await ws.send("EOS")

        sender = asyncio.create_task(send())
        async for raw in ws:
            result.messages.append(json.loads(raw))
        await sender
        result.close_code = ws.close_code
    closed = time.monotonic()
    code = await stopping[0]
    took = time.monotonic() - (gateway.signalled or 0)
    assert gateway.signalled is not None and gateway.signalled < closed, "SIGTERM mid-session"
    assert code == 0, gateway.logs(30)
    assert_well_formed(result.messages)
    assert finals(result) == expected(reference_decode, clip)
    assert result.close_code == 1000
    print(
        f"gateway: exit 0 {took:.1f} s after SIGTERM, {closed - gateway.signalled:.1f} s "
        "of it draining the open session"
    )
