"""The whole path, as kaldi-gstreamer-server's client.py drives it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import aiohttp
import pytest
import websockets

from harness.cluster import Cluster
from harness.env import UNIT
from harness.media import pcm_of
from harness.scoring import cer, read_manifest
from harness.speech import SENTENCE, assert_well_formed
from ksc.client import speech_url, stream
from shared import cluster
from shared.keys import SESSION_TTL_S, Keys
from tests.integration.conftest import PREFIX

KEYS = Keys(PREFIX)


async def test_client_py_behaviour_realtime(running: Cluster, espeak_wav) -> None:
    """A 16 kHz WAV, empty content type, rate-limited in quarter seconds, then EOS."""
    wav = espeak_wav(SENTENCE)
    result = await stream(speech_url(running.ws), wav.read_bytes(), realtime=True)
    assert_well_formed(result.messages)
    assert result.finals, "at least one final"
    assert any(not m["result"]["final"] for m in result.messages), "partials while streaming"
    assert result.close_code == 1000, "the server closes the socket after the last final"


async def test_cluster_equals_direct_decode(
    running: Cluster, reference_decode, testdata: Path
) -> None:
    """The queue changes nothing: same engine and segmentation, same transcript."""
    clips = sorted((testdata / "clips").glob("*.wav"))[:3]
    for clip in clips:
        direct = reference_decode(pcm_of(clip))
        result = await stream(speech_url(running.ws), clip.read_bytes(), realtime=False)
        assert_well_formed(result.messages)
        got = [(f["segment"], f["result"]["hypotheses"][0]["transcript"]) for f in result.finals]
        assert got == [(f.segment, f.text) for f in direct], clip.name
        times = [t for f in result.finals for t in (f["segment-start"], f["segment-length"])]
        assert times == pytest.approx([t for f in direct for t in (f.start, f.length)], abs=1e-3)


async def test_two_concurrent_sessions_on_two_workers(running: Cluster, espeak_wav) -> None:
    wav = espeak_wav(SENTENCE)
    owners: set[str] = set()

    async def watch() -> None:
        # Each worker has one slot: two live sessions must be owned by two workers.
        while True:
            for s in await cluster.sessions(running.gateway.redis, KEYS):
                if s.owner:
                    owners.add(s.owner)
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(
            *(stream(speech_url(running.ws), wav.read_bytes(), realtime=True) for _ in range(2))
        )
    finally:
        watcher.cancel()
    texts = [r.text for r in results]
    assert texts[0] and texts[0] == texts[1]
    assert owners == {"w1", "w2"}


async def test_no_worker_gives_status_9(empty_gateway: Cluster, espeak_wav) -> None:
    result = await stream(
        speech_url(empty_gateway.ws), espeak_wav(SENTENCE).read_bytes(), realtime=False
    )
    assert [m["status"] for m in result.messages] == [9]
    assert result.messages[0]["message"] == "No decoder available, try again later"
    assert result.messages[0]["id"]
    assert result.close_code == 1000


async def test_raw_pcm_with_caps_and_resampling(
    running: Cluster, espeak_wav, reference_decode
) -> None:
    """Raw 44.1 kHz stereo PCM described by a GStreamer caps string is resampled.

    The reference is the same audio converted by another resampler (sox).
    """
    wav44 = espeak_wav(SENTENCE, rate=44100, channels=2)
    wav16 = wav44.with_suffix(".sox16.wav")
    subprocess.run(["sox", str(wav44), "-r", "16000", "-c", "1", str(wav16)], check=True)
    caps = (
        "audio/x-raw, layout=(string)interleaved, rate=(int)44100, "
        "format=(string)S16LE, channels=(int)2"
    )
    result = await stream(
        speech_url(running.ws, caps), pcm_of(wav44), byterate=176400, realtime=False
    )
    assert_well_formed(result.messages)
    direct = " ".join(f.text for f in reference_decode(pcm_of(wav16)))
    edits, chars = cer(direct, result.text)
    assert result.finals and edits / chars <= 0.3, (direct, result.text)


SPEECH = object()  # stands for a few seconds of speech, so the session is still decoding


@pytest.mark.parametrize(
    ("caps", "frames", "expect"),
    [
        ("audio/x-raw, rate=(int)abc", [b"\0" * 100], "Malformed rate"),
        ("audio/x-raw, format=S24BE", [b"\0" * 100], "Unsupported sample format"),
        ("", [b"NOTAWAVEFILEATALL" * 10], "not a WAV file"),
        ("audio/x-raw, rate=16000", [SPEECH, "EOS", b"\0" * 3200], "after EOS"),
        ("audio/x-raw, rate=16000", [b"\0" * 3200, "{garbage"], "Unsupported text message"),
        ("audio/x-raw, rate=16000", [SPEECH, "EOS", "EOS"], "EOS received twice"),
    ],
)
async def test_bad_input_gets_status_and_close(
    running: Cluster, espeak_wav, caps: str, frames: list, expect: str
) -> None:
    speech = pcm_of(espeak_wav(SENTENCE))
    frames = [speech if f is SPEECH else f for f in frames]
    async with websockets.connect(speech_url(running.ws, caps), max_size=None) as ws:
        for frame in frames:
            try:
                await ws.send(frame)
            except websockets.ConnectionClosed:
                break
        messages = [json.loads(m) async for m in ws]
    assert messages[-1]["status"] == 5, messages
    assert expect in messages[-1]["message"]
    assert ws.close_code == 1000


async def test_oversized_frame(running: Cluster) -> None:
    limit = running.gateway.settings.max_frame_bytes
    async with websockets.connect(
        speech_url(running.ws, "audio/x-raw, rate=16000"), max_size=None
    ) as ws:
        await ws.send(b"\0" * (limit + 1))
        messages = [json.loads(m) async for m in ws]
    assert messages[-1]["status"] == 5 and "exceeds" in messages[-1]["message"]


async def test_bad_session_does_not_disturb_a_neighbour(running: Cluster, espeak_wav) -> None:
    wav = espeak_wav(SENTENCE)

    async def bad() -> None:
        await asyncio.sleep(1 * UNIT)
        async with websockets.connect(speech_url(running.ws, "audio/x-raw")) as ws:
            await ws.send(b"\0" * 3200)
            await ws.send("not json")
            _ = [m async for m in ws]

    good, _ = await asyncio.gather(stream(speech_url(running.ws), wav.read_bytes()), bad())
    assert_well_formed(good.messages)
    assert good.finals and good.close_code == 1000


async def test_client_vanishing_frees_the_slot(running: Cluster, espeak_wav) -> None:
    wav = espeak_wav(SENTENCE)
    async with websockets.connect(speech_url(running.ws)) as ws:
        await ws.send(wav.read_bytes()[:32000])
    async with asyncio.timeout(30 * UNIT):
        while sum(w.slots_free for w in await cluster.workers(running.gateway.redis, KEYS)) < 2:
            await asyncio.sleep(0.1)
    assert all(p.poll() is None for p in running.workers.values())


async def test_status_endpoints(running: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.http}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{running.http}/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["slots"] == 2
        async with http.ws_connect(f"{running.ws}/client/ws/status") as ws:
            status = json.loads((await ws.receive()).data)
    assert status["num_workers_available"] == 2
    assert status["num_requests_processed"] >= 0


async def test_readyz_without_workers(empty_gateway: Cluster) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{empty_gateway.http}/readyz") as resp:
        assert resp.status == 503


async def test_cer_on_real_recordings(running: Cluster, testdata: Path) -> None:
    """The cluster's CER on the real recordings is at or below the vosk package's (0.28)."""
    items = read_manifest(testdata)
    edits = chars = 0
    sem = asyncio.Semaphore(2)

    async def one(path: Path, ref: str) -> tuple[int, int]:
        async with sem:
            result = await stream(speech_url(running.ws), path.read_bytes(), realtime=False)
        assert result.close_code == 1000 and result.status == 0
        return cer(ref, result.text)

    for e, c in await asyncio.gather(*(one(p, r) for p, r in items)):
        edits += e
        chars += c
    assert len(items) == 22 and chars > 400
    assert edits / chars <= 0.28, f"CER {edits / chars:.3f}"


async def test_silence_does_not_pile_up_in_redis(running: Cluster) -> None:
    """Without results the replay point still moves on, and the audio before it goes."""
    url = speech_url(running.ws, "audio/x-raw, rate=16000, format=S16LE")
    chunks = 80  # 20 s of silence in quarter seconds
    async with websockets.connect(url) as ws:
        for _ in range(chunks):
            await ws.send(bytes(8000))
        sid = ""
        redis = running.gateway.redis
        async with asyncio.timeout(30 * UNIT):
            while True:
                for raw in await redis.zrange(KEYS.live, 0, -1):
                    meta = await redis.hgetall(KEYS.meta(raw.decode()))
                    if int(meta.get(b"replay_sample", 0)) >= 16000 * 15:
                        sid = raw.decode()
                if sid:
                    break
                await asyncio.sleep(0.1)
        assert await redis.xlen(KEYS.audio(sid)) < chunks // 2
        await ws.send("EOS")
        messages = [json.loads(m) async for m in ws]
    assert messages == [] and ws.close_code == 1000  # no speech: no result, a clean close


async def test_permessage_deflate_is_declined(empty_gateway: Cluster) -> None:
    """Clients offering compression (websockets and browsers do) get plain frames."""
    for path in ("/client/ws/speech", "/vosk"):
        async with websockets.connect(empty_gateway.ws + path, compression="deflate") as ws:
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers


async def test_a_session_outlives_the_ttl_its_keys_were_created_with(
    running: Cluster, espeak_wav
) -> None:
    """Issue 12: a session longer than SESSION_TTL_S lost its record mid-stream. Here the
    keys' TTL is cut to 2 s while the session runs: its owner and the gateway renew it,
    so the session ends as usual and its keys then live another SESSION_TTL_S."""
    wav = espeak_wav(SENTENCE).read_bytes()
    redis = running.gateway.redis
    sid: list[str] = []

    async def shorten() -> None:
        while not sid:
            for s in await cluster.sessions(redis, KEYS):
                if s.state == "decoding":
                    sid.append(s.id)
            await asyncio.sleep(0.05)
        for key in KEYS.session_keys(sid[0]):
            await redis.expire(key, 2)

    shortener = asyncio.create_task(shorten())
    result = await stream(speech_url(running.ws), wav + wav, realtime=True)
    await shortener
    assert_well_formed(result.messages)
    assert result.finals and result.close_code == 1000
    assert all(m["status"] == 0 for m in result.messages), result.messages
    for key in KEYS.session_keys(sid[0]):
        assert await redis.ttl(key) > SESSION_TTL_S - 60, key
