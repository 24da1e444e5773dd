"""The fuzz corpus (``benchmarks/fuzz.py``), bounded, against a real ``ksc gateway``
process and a real worker: every case gets a defined outcome, both processes keep
running, a neighbour session streaming real speech next to the corpus gets exactly its
reference transcript every time, and the gateway's memory comes back near its
baseline after the corpus and 2000 idle connections.

Memory is asserted (with a generous bound), never time. The longer run is
``python -m benchmarks.fuzz`` (figures in ``docs/reliability.md``).
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import time
import urllib.request
import wave
from collections.abc import Iterator

import aiohttp
import pytest
from redis.asyncio import Redis

from harness.cluster import KSC, free_port, start_worker, stop, wait_for_workers
from harness.env import UNIT
from harness.fuzz import RAW, Target, gateway_memory, idle_connections, run_corpus
from harness.speech import SENTENCES
from ksc.client import speech_url, stream
from shared.keys import Keys

PREFIX = "fuzz"
MAX_FRAME = 1024 * 1024
IDLE = 2000
#: Growth of the gateway's PSS over the corpus and the idle connections that counts as
#: "back near baseline": generous, since Python's allocator keeps freed arenas.
MEMORY_SLACK_MB = 40.0


@pytest.fixture(scope="module")
def fuzz_target(redis_server: str, prepared_model: object) -> Iterator[tuple[Target, list]]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the gateway inherits it
    url = f"{redis_server}/0"
    port = free_port()
    worker = start_worker(url, "fz1", slots=4, prefix=PREFIX)
    gateway = subprocess.Popen(
        [
            *KSC,
            "gateway",
            *("--redis-url", url, "--prefix", PREFIX, "--log-level", "error"),
            *("--host", "127.0.0.1", "--port", str(port)),
            *("--max-frame-bytes", str(MAX_FRAME), "--admission-wait", str(5 * UNIT)),
        ]
    )

    async def ready() -> None:
        redis = Redis.from_url(url)
        await wait_for_workers(redis, Keys(PREFIX), 1)
        await redis.aclose()

    asyncio.run(ready())
    deadline = 60 * UNIT
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        deadline -= 0.2
        assert deadline > 0, "gateway not ready"
        time.sleep(0.2)
    target = Target(f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}", MAX_FRAME)
    procs = [gateway, worker]
    yield target, procs
    stop(*procs)


@pytest.fixture(scope="module")
def neighbour_pcm(espeak_wav) -> bytes:  # type: ignore[no-untyped-def]
    """Two sentences of real speech (~8 s): the neighbour session's audio."""
    pcm = b""
    for text in SENTENCES[:2]:
        with wave.open(str(espeak_wav(text))) as w:
            pcm += w.readframes(w.getnframes()) + bytes(2 * 16000)
    return pcm


async def test_fuzz_corpus(fuzz_target, neighbour_pcm: bytes, reference_decode) -> None:  # type: ignore[no-untyped-def]
    target, procs = fuzz_target
    expected = [(f.segment, f.text) for f in reference_decode(neighbour_pcm)]
    assert expected, "the reference decode found speech"
    pid = procs[0].pid
    # Warm up (first sessions load codecs and caches), then take the baseline.
    warm = await stream(speech_url(target.ws, RAW), neighbour_pcm, realtime=False)
    assert [(f["segment"], f["result"]["hypotheses"][0]["transcript"]) for f in warm.finals] == (
        expected
    )
    await run_corpus(target, neighbour_pcm, expected, rounds=1, seed=1)
    before = gateway_memory(pid)

    tally = await run_corpus(target, neighbour_pcm, expected, rounds=2, seed=4)
    tally.idle = await idle_connections(target, IDLE, tally, pid)
    await asyncio.sleep(1.0)
    after = gateway_memory(pid)
    report = tally.report()
    print(
        f"fuzz: {report['cases']} cases, {report['messages_sent']} messages sent, "
        f"{len(tally.undefined)} undefined, neighbours {tally.neighbours} "
        f"(affected {len(tally.neighbours_affected)}), outcomes {report['by_outcome']}, "
        f"idle {tally.idle}, gateway memory before {before} after {after} MB"
    )
    crashed = [p.args[3] for p in procs if p.poll() is not None]
    assert not crashed, f"processes died: {crashed}"
    assert not tally.undefined, tally.undefined
    assert tally.neighbours >= 1 and not tally.neighbours_affected, tally.neighbours_affected
    assert tally.idle["healthz_while_open"]
    # Every kind of hostile input was tried, and the defined outcomes include refusals.
    assert len(tally.cases) >= 18
    assert any(o.startswith("status 5") for o in tally.outcomes)
    assert any(o.startswith("http 4") for o in tally.outcomes)
    assert after["pss"] - before["pss"] < MEMORY_SLACK_MB, (before, after)

    # And afterwards: nothing left open, a new session gets exactly its transcript.
    result = await stream(speech_url(target.ws, RAW), neighbour_pcm, realtime=False)
    got = [(f["segment"], f["result"]["hypotheses"][0]["transcript"]) for f in result.finals]
    assert got == expected and result.close_code == 1000
    async with aiohttp.ClientSession() as http, http.get(f"{target.http}/metrics") as resp:
        assert "ksc_gateway_sessions_active 0.0" in await resp.text()
