"""The gateway's input bounds, each crossed by a real client against real parts.

Every test here is a hostile client: a decompression bomb, one push that expands past
the backlog or the key's audio budget, an oversized or deeply nested JSON message, a
vosk socket that never starts its audio, a client trickling bytes to hold its slot.
Each must get a clear status message, its worker must be told (its slot frees at
once), and other sessions must lose nothing. The rows of the "Bounds" table in
docs/security.md name these tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import websockets
from redis.asyncio import Redis

from gateway.app import serve
from gateway.audio import EXPANSION_GRACE_S, MIN_BYTES_PER_SECOND
from gateway.containers import PIECE_BYTES
from harness.cluster import Cluster, start_worker, stop, wait_for_workers
from harness.env import UNIT
from harness.media import pcm_of
from harness.speech import COMMANDS, FRAME, SENTENCE
from ksc.client import speech_url, stream
from shared import cluster
from shared.config import GatewaySettings
from shared.keys import Keys
from shared.protocol import MAX_JSON_BYTES, MAX_PHRASE_CHARS, MAX_PHRASES, Status
from shared.wire import Abort, parse_audio_entry
from tests.integration.conftest import PREFIX

KEYS = Keys(PREFIX)
RAW = "audio/x-raw, rate=(int)16000, format=(string)S16LE, channels=(int)1"
RAW_U8_1K = "audio/x-raw, rate=(int)1000, format=(string)U8, channels=(int)1"
DAVE = "dave-key-0123456789abcdef00"  # 2 audio seconds per hour
ERIN = "erin-key-0123456789abcdef00"  # one session at a time
#: The gateway's loggers: nothing a client sends may log an error (a traceback).
GATEWAY_LOGGERS = ("aiohttp.server", "aiohttp.web", "gateway")


# --- fixtures ------------------------------------------------------------------------------


def gateway_settings(url: str, prefix: str = PREFIX, **overrides: Any) -> GatewaySettings:
    base = GatewaySettings(
        redis_url=url, prefix=prefix, host="127.0.0.1", port=0, claim_timeout=10 * UNIT
    )
    return GatewaySettings(**{**base.__dict__, **overrides})


@pytest.fixture
async def strict_gw(running: Cluster) -> AsyncIterator[Cluster]:
    """The shared cluster behind a gateway with a 2 s idle timeout."""
    settings = gateway_settings(running.redis_url, idle_timeout=2.0 * UNIT)
    async with serve(settings) as (gateway, port):
        yield Cluster(running.redis_url, gateway, port, running.workers)


@pytest.fixture
async def unbacked_gw(running: Cluster) -> AsyncIterator[Cluster]:
    """The shared cluster behind a gateway without a backlog bound: what stops a bomb
    there is the expansion bound alone, not the pace of the worker."""
    settings = gateway_settings(running.redis_url, max_backlog_seconds=0)
    async with serve(settings) as (gateway, port):
        yield Cluster(running.redis_url, gateway, port, running.workers)


@pytest.fixture
async def keyed_gw(running: Cluster, tmp_path: Path) -> AsyncIterator[Cluster]:
    """The shared cluster behind a gateway with API keys and per-key limits."""
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{DAVE} dave audio-seconds=2\n{ERIN} erin max-sessions=1\n")
    redis = running.gateway.redis
    for name in ("dave", "erin"):  # counters of an earlier run
        await redis.delete(KEYS.key_sessions(name))
        await redis.delete(KEYS.key_audio(name, int(time.time() // 3600)))
    settings = gateway_settings(running.redis_url, api_keys=str(keys_file))
    async with serve(settings) as (gateway, port):
        yield Cluster(running.redis_url, gateway, port, running.workers)


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test if the gateway logged anything at error level (a traceback)."""
    caplog.set_level(logging.INFO)
    yield
    errors = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(GATEWAY_LOGGERS)
    ]
    assert not errors, [r.getMessage() for r in errors]


OWN = "boundsown"
OWN_KEYS = Keys(OWN)


@pytest.fixture(scope="module")
def lone_worker(redis_server: str, prepared_model: object) -> Iterator[subprocess.Popen[bytes]]:
    """A worker of this module's own, to stop: its long lease keeps a stopped worker's
    session (no takeover drains the backlog behind the test's back)."""
    proc = start_worker(f"{redis_server}/0", "bounds-w", prefix=OWN, lease=120.0)
    yield proc
    os.kill(proc.pid, signal.SIGCONT)
    stop(proc)


# --- helpers -------------------------------------------------------------------------------


async def slots_free(redis: Redis, keys: Keys = KEYS) -> int:
    return sum(w.slots_free for w in await cluster.workers(redis, keys))


async def wait_all_slots_free(redis: Redis, count: int = 2) -> None:
    """Both workers of the shared cluster free again: well before any idle timeout
    (60 s) or lease could have freed a slot the gateway forgot to release."""
    async with asyncio.timeout(15 * UNIT):
        while await slots_free(redis) < count:
            await asyncio.sleep(0.1)


async def aborted(redis: Redis, sid: str) -> str:
    """The reason of the ``Abort`` the gateway put on the session's audio stream."""
    async with asyncio.timeout(10 * UNIT):
        while True:
            for _id, fields in await redis.xrange(KEYS.audio(sid)):
                entry = parse_audio_entry(fields)
                if isinstance(entry, Abort):
                    return entry.reason
            await asyncio.sleep(0.05)


async def latest_sid(redis: Redis) -> str:
    """The session id of the newest session request for the default model."""
    [(_id, fields)] = await redis.xrevrange(KEYS.sessions("ko"), count=1)
    return str(fields[b"sid"].decode())


async def audio_bytes(redis: Redis, keys: Keys, sid: str) -> int:
    return int(await redis.hget(keys.meta(sid), "audio_bytes") or 0)


async def vosk_reply_to(url: str, *texts: str, headers: dict[str, str] | None = None) -> Any:
    """Send ``texts`` (no audio) on a vosk socket; the first reply, and the close code."""
    async with asyncio.timeout(20 * UNIT):
        async with websockets.connect(url, max_size=None, additional_headers=headers) as ws:
            for text in texts:
                await ws.send(text)
            reply = json.loads(await ws.recv())
            with suppress(websockets.ConnectionClosed):
                await ws.recv()
    return reply, ws.close_code


async def read_all(ws: websockets.ClientConnection) -> list[dict[str, Any]]:
    """Every message until the server closes, whatever the close code."""
    messages: list[dict[str, Any]] = []
    with suppress(websockets.ConnectionClosed):
        async for raw in ws:
            messages.append(json.loads(raw))
    return messages


def sox_flac_bomb(path: Path, seconds: int) -> bytes:
    """``seconds`` of digital silence at 1 kHz as FLAC: about 3 bytes a second."""
    subprocess.run(
        [
            "sox",
            "-D",
            "-n",
            "-r",
            "1000",
            "-c",
            "1",
            "-b",
            "16",
            str(path),
            "trim",
            "0",
            str(seconds),
        ],
        check=True,
    )
    return path.read_bytes()


# --- 1. decoded audio ----------------------------------------------------------------------


async def test_flac_bomb(
    unbacked_gw: Cluster, tmp_path: Path, espeak_wav, reference_decode
) -> None:
    """An hour of silence in about 11 KB of FLAC, in one frame, next to a normal session:
    status 5 once the audio outgrows its bytes; the stream holds no more than the
    bound; the neighbour gets exactly its transcript; both workers live on."""
    bomb = sox_flac_bomb(tmp_path / "bomb.flac", 3600)
    assert len(bomb) < 32 * 1024
    wav = espeak_wav(SENTENCE)
    neighbour, result = await asyncio.gather(
        stream(speech_url(unbacked_gw.ws), wav.read_bytes(), realtime=False),
        stream(speech_url(unbacked_gw.ws), bomb, byterate=4 * len(bomb), realtime=False),
    )
    assert result.status == Status.NOT_ALLOWED, result.messages
    message = result.messages[-1]["message"]
    assert "Audio expands beyond" in message, message
    assert result.close_code == 1000
    redis = unbacked_gw.gateway.redis
    sid = result.messages[-1]["id"]
    allowed_s = EXPANSION_GRACE_S + len(bomb) / MIN_BYTES_PER_SECOND
    assert await audio_bytes(redis, KEYS, sid) <= allowed_s * 32000 + 2 * PIECE_BYTES
    assert "expands" in await aborted(redis, sid)
    assert neighbour.status == 0
    assert [f["result"]["hypotheses"][0]["transcript"] for f in neighbour.finals] == [
        f.text for f in reference_decode(pcm_of(wav))
    ]
    # Over HTTP too: 400 with the status message.
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{unbacked_gw.http}/client/dynamic/recognize", data=bomb) as resp:
            assert resp.status == 400
            answer = await resp.json()
    assert answer["status"] == Status.NOT_ALLOWED and "expands" in answer["message"]
    await wait_all_slots_free(redis)
    assert all(proc.poll() is None for proc in unbacked_gw.workers.values())


async def test_one_push_cannot_pass_the_backlog(
    running: Cluster, lone_worker: subprocess.Popen[bytes]
) -> None:
    """One frame of raw U8 at 1 kHz (256 KiB: 4.4 minutes, 8 MiB once normalised),
    sent while the decoder is stopped: no more than ``max_backlog_seconds`` (2 s) plus
    a chunk goes onto the stream; the rest follows as the decoder reads again."""
    redis = Redis.from_url(running.redis_url)
    try:
        await wait_for_workers(redis, OWN_KEYS, 1)
        async with asyncio.timeout(30 * UNIT):
            while await slots_free(redis, OWN_KEYS) < 1:
                await asyncio.sleep(0.1)
        backlog = 2.0
        settings = gateway_settings(
            running.redis_url,
            prefix=OWN,
            max_backlog_seconds=backlog,
            max_decoder_lag=0,
            claim_timeout=20 * UNIT,
        )
        async with serve(settings) as (_gateway, port):
            url = speech_url(f"ws://127.0.0.1:{port}", RAW_U8_1K)
            async with websockets.connect(url, compression=None, max_size=None) as ws:
                await ws.send(bytes([128]) * 1000)  # one second, to be claimed
                async with asyncio.timeout(20 * UNIT):
                    while not (sid := await _decoding(redis)):
                        await asyncio.sleep(0.05)
                os.kill(lone_worker.pid, signal.SIGSTOP)
                try:
                    await ws.send(bytes([128]) * 256 * 1024)
                    held = await _settled(redis, sid)
                    assert held <= (1.0 + backlog + 0.25) * 32000, held
                finally:
                    os.kill(lone_worker.pid, signal.SIGCONT)
                async with asyncio.timeout(30 * UNIT):  # the decoder reads: so does the gateway
                    while await audio_bytes(redis, OWN_KEYS, sid) <= held:
                        await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def _decoding(redis: Redis) -> str:
    """The sid of the session the lone worker decodes, once audio reached it ('' yet)."""
    for raw in await redis.zrange(OWN_KEYS.live, 0, -1):
        sid = raw.decode()
        meta = await redis.hgetall(OWN_KEYS.meta(sid))
        if meta.get(b"state") == b"decoding" and int(meta.get(b"audio_bytes", 0)) > 0:
            return str(sid)
    return ""


async def _settled(redis: Redis, sid: str, quiet: float = 1.0 * UNIT) -> int:
    """The session's audio on the stream once it has stopped growing for ``quiet`` s."""
    async with asyncio.timeout(60 * UNIT):
        before = -1
        while True:
            now = await audio_bytes(redis, OWN_KEYS, sid)
            if now == before:
                return now
            before = now
            await asyncio.sleep(quiet)


async def test_audio_quota_is_checked_before_writing(keyed_gw: Cluster) -> None:
    """30 s of audio in one frame against a budget of 2 s: status 6, and neither the
    stream nor the key's counter ever gets more than the 2 s."""
    url = speech_url(keyed_gw.ws, RAW, token=DAVE)
    pcm = bytes(30 * 32000)
    result = await stream(url, pcm, byterate=4 * len(pcm), realtime=False)
    assert result.status == Status.SERVICE_NOT_ALLOWED, result.messages
    assert "audio seconds" in result.messages[-1]["message"]
    redis = keyed_gw.gateway.redis
    sid = result.messages[-1]["id"]
    assert await audio_bytes(redis, KEYS, sid) <= 2 * 32000
    used = float(await redis.get(KEYS.key_audio("dave", int(time.time() // 3600))) or 0)
    assert 1.0 <= used <= 2.0
    assert "audio seconds" in await aborted(redis, sid)
    await wait_all_slots_free(redis)


# --- 2. the vosk config ----------------------------------------------------------------------


async def test_vosk_config_bounds(running: Cluster) -> None:
    """Refused as soon as the config arrives, before any audio and any admission: a text
    frame over 64 KiB (status 5), too many phrases or too long a phrase (status 7)."""
    url = running.ws + "/vosk"
    redis = running.gateway.redis
    before = await redis.xlen(KEYS.sessions("ko"))
    huge = json.dumps({"config": {"phrase_list": COMMANDS * 2000}}, ensure_ascii=False)
    assert len(huge.encode()) > MAX_JSON_BYTES
    reply, code = await vosk_reply_to(url, huge)
    assert reply["status"] == Status.NOT_ALLOWED and str(MAX_JSON_BYTES) in reply["error"]
    assert code == 1008
    many = json.dumps({"config": {"phrase_list": [f"불 {i}" for i in range(MAX_PHRASES + 1)]}})
    assert len(many.encode()) < MAX_JSON_BYTES
    reply, code = await vosk_reply_to(url, many)
    assert reply["status"] == Status.BAD_GRAMMAR and f"at most {MAX_PHRASES}" in reply["error"]
    assert code == 1008
    long = json.dumps({"config": {"phrase_list": ["불 " + "켜" * MAX_PHRASE_CHARS]}})
    reply, code = await vosk_reply_to(url, long)
    assert reply["status"] == Status.BAD_GRAMMAR and "characters" in reply["error"]
    assert await redis.xlen(KEYS.sessions("ko")) == before, "nothing reached the sessions stream"


# --- 3. the vosk socket before its audio -----------------------------------------------------


async def test_vosk_setup_times_out(strict_gw: Cluster) -> None:
    """Configs and resets, never audio: status 2 once the idle timeout (2 s) has passed
    since connect, however busy the client keeps the socket."""
    async with asyncio.timeout(20 * UNIT):
        async with websockets.connect(strict_gw.ws + "/vosk") as ws:

            async def busy() -> None:
                with suppress(websockets.ConnectionClosed):
                    while True:
                        await ws.send('{"config": {"sample_rate": 16000}}')
                        await ws.send('{"reset": 1}')
                        await asyncio.sleep(0.2)

            sender = asyncio.create_task(busy())
            try:
                replies = await read_all(ws)
            finally:
                sender.cancel()
                with suppress(asyncio.CancelledError):
                    await sender
    assert replies[:-1] and all(r == {"text": ""} for r in replies[:-1]), replies
    assert replies[-1] == {
        "error": f"No audio received for {2.0 * UNIT:g} s after connecting",
        "status": Status.ABORTED,
    }


async def test_vosk_socket_counts_against_its_key_from_connect(keyed_gw: Cluster) -> None:
    """A vosk socket that has sent no audio yet already holds one of its key's
    sessions: with max-sessions=1 a second session of the key is refused (status 6);
    the place frees when the socket closes."""
    redis = keyed_gw.gateway.redis
    headers = {"X-API-Key": ERIN}
    async with websockets.connect(keyed_gw.ws + "/vosk", additional_headers=headers) as idle:
        await idle.send('{"config": {"sample_rate": 16000}}')
        async with asyncio.timeout(10 * UNIT):
            while not await redis.zcard(KEYS.key_sessions("erin")):
                await asyncio.sleep(0.05)
        second = await stream(speech_url(keyed_gw.ws, RAW, token=ERIN), b"", realtime=False)
        assert [m["status"] for m in second.messages] == [Status.SERVICE_NOT_ALLOWED]
        assert "1 sessions open" in second.messages[0]["message"]
        reply, _code = await vosk_reply_to(keyed_gw.ws + "/vosk", headers=headers)
        assert reply["status"] == Status.SERVICE_NOT_ALLOWED
    async with asyncio.timeout(10 * UNIT):
        while await redis.zcard(KEYS.key_sessions("erin")):
            await asyncio.sleep(0.05)


# --- 4. a trickle ----------------------------------------------------------------------------


async def test_trickle_is_ended(strict_gw: Cluster) -> None:
    """Two bytes every half second never make half a second of audio: the 2 s idle
    timeout ends the session (status 2) although data keeps arriving, and the worker
    is told."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(30 * UNIT):
        async with websockets.connect(speech_url(strict_gw.ws, RAW)) as ws:

            async def trickle() -> None:
                with suppress(websockets.ConnectionClosed):
                    while True:
                        await ws.send(b"\0\0")
                        await asyncio.sleep(0.5 * UNIT)

            sender = asyncio.create_task(trickle())
            try:
                messages = [json.loads(m) async for m in ws]
            finally:
                sender.cancel()
                with suppress(asyncio.CancelledError):
                    await sender
    assert [m["status"] for m in messages] == [Status.ABORTED], messages
    assert "Too little audio" in messages[0]["message"]
    redis = strict_gw.gateway.redis
    assert "Too little audio" in await aborted(redis, messages[0]["id"])
    await wait_all_slots_free(redis)


async def test_real_time_client_with_a_pause_is_not_idle(strict_gw: Cluster, espeak_wav) -> None:
    """Speech in real time with a pause of half the idle timeout in the middle: the
    session ends normally with its transcript."""
    pcm = pcm_of(espeak_wav(SENTENCE))
    half = len(pcm) // 2 // FRAME * FRAME
    async with asyncio.timeout(60 * UNIT):
        async with websockets.connect(speech_url(strict_gw.ws, RAW)) as ws:

            async def send() -> None:
                for start in range(0, len(pcm), FRAME):
                    if start == half:
                        await asyncio.sleep(1.0 * UNIT)
                    await ws.send(pcm[start : start + FRAME])
                    await asyncio.sleep(0.25)
                await ws.send("EOS")

            sender = asyncio.create_task(send())
            messages = [json.loads(m) async for m in ws]
            await sender
    assert messages and all(m["status"] == 0 for m in messages), messages
    assert any(m["result"]["final"] for m in messages)


# --- 5. JSON -------------------------------------------------------------------------------


DEEP = "[" * 200_000  # far deeper than Python's recursion limit, within the frame limits


async def test_deep_json_in_phrases(running: Cluster, no_errors_logged: None) -> None:
    """``?phrases=`` nested past the recursion limit: status 7 on the websocket, 400 with
    status 7 over HTTP; no traceback."""
    phrases = "[" * 1300  # as deep as an 8 KiB request line allows, once %-encoded
    result = await stream(speech_url(running.ws, phrases=phrases), b"", realtime=False)
    assert result.status == Status.BAD_GRAMMAR, result.messages
    assert "nested deeper" in result.messages[-1]["message"]
    async with aiohttp.ClientSession() as http:
        url = f"{running.http}/client/dynamic/recognize?phrases={quote(phrases)}"
        async with http.put(url, data=bytes(3200)) as resp:
            assert resp.status == 400
            answer = await resp.json()
    assert answer["status"] == Status.BAD_GRAMMAR and "nested deeper" in answer["message"]


async def test_deep_json_text_frame_mid_session(running: Cluster, no_errors_logged: None) -> None:
    """A deeply nested text frame after audio: status 5, the worker is told (``Abort``)
    and its slot frees at once."""
    async with asyncio.timeout(30 * UNIT):
        async with websockets.connect(speech_url(running.ws, RAW), max_size=None) as ws:
            await ws.send(bytes(16000))
            await ws.send(DEEP)
            messages = [json.loads(m) async for m in ws]
    assert [m["status"] for m in messages] == [Status.NOT_ALLOWED], messages
    assert "nested deeper" in messages[0]["message"]
    redis = running.gateway.redis
    assert "nested deeper" in await aborted(redis, messages[0]["id"])
    await wait_all_slots_free(redis)


async def test_deep_json_in_vosk_messages(running: Cluster, no_errors_logged: None) -> None:
    """The vosk dialect, before the audio and in the middle of it: the error reply with
    status 5 and close 1008; mid-session the worker is told and its slot frees."""
    url = running.ws + "/vosk"
    reply, code = await vosk_reply_to(url, '{"config": ' + "[" * 5000)
    assert reply["status"] == Status.NOT_ALLOWED and "nested deeper" in reply["error"]
    assert code == 1008
    async with asyncio.timeout(30 * UNIT):
        async with websockets.connect(url, max_size=None) as ws:
            for _ in range(2):
                await ws.send(bytes(FRAME))
                assert "partial" in json.loads(await ws.recv())
            await ws.send('{"eof": ' + "[" * 5000)
            replies = await read_all(ws)
    assert replies[-1]["status"] == Status.NOT_ALLOWED and "nested" in replies[-1]["error"]
    assert ws.close_code == 1008
    redis = running.gateway.redis
    assert "nested deeper" in await aborted(redis, await latest_sid(redis))
    await wait_all_slots_free(redis)
