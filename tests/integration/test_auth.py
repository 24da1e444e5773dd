"""Authentication and per-key limits against the real cluster, with real clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.app import serve
from gateway.auth import make_token
from gateway.http import RECOGNIZE
from harness.cluster import Cluster
from harness.env import UNIT
from ksc.client import speech_url, stream
from shared.config import GatewaySettings
from shared.keys import Keys
from tests.integration.conftest import PREFIX

KEYS = Keys(PREFIX)
ALICE = "alice-key-0123456789abcdef"  # one session at a time
BOB = "bob-key-0123456789abcdef00"  # 1.5 audio seconds per hour
CAROL = "carol-key-0123456789abcdef"  # no limits
SECRET = "integration-secret-0123456789abcdef"
SHORT = "안녕하세요. 음성 인식 서버입니다."


@pytest.fixture
async def auth_gw(running: Cluster, tmp_path: Path) -> AsyncIterator[Cluster]:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        f"{ALICE} alice max-sessions=1\n{BOB} bob audio-seconds=1.5\n{CAROL} carol\n"
    )
    for name in ("alice", "bob", "carol"):  # counters of an earlier run of this test
        await running.gateway.redis.delete(KEYS.key_sessions(name))
        window = int(time.time() // 3600)
        await running.gateway.redis.delete(KEYS.key_audio(name, window))
    settings = GatewaySettings(
        redis_url=running.redis_url,
        prefix=PREFIX,
        host="127.0.0.1",
        port=0,
        claim_timeout=10 * UNIT,
        api_keys=str(keys_file),
        token_secret=SECRET,
        cors_origins="https://app.example",
    )
    async with serve(settings) as (gateway, port):
        yield Cluster(running.redis_url, gateway, port, running.workers)


async def ws_refusal(url: str, **kwargs: object) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, **kwargs):  # type: ignore[arg-type]
            pass
    return info.value.response.status_code


async def test_unauthenticated_is_401_before_the_upgrade(auth_gw: Cluster, espeak_wav) -> None:
    url = speech_url(auth_gw.ws)
    assert await ws_refusal(url) == 401
    assert await ws_refusal(f"{auth_gw.ws}/client/ws/status") == 401
    for vosk in ("/", "/vosk"):  # every upgrade, whichever module serves the path
        assert await ws_refusal(f"{auth_gw.ws}{vosk}") == 401
    expired = make_token(SECRET, "carol", 60, now=time.time() - 3600)
    forged = make_token("not-the-secret-0123456789abcdefghij", "carol", 60)
    assert await ws_refusal(f"{url}&token={expired}") == 401
    assert await ws_refusal(f"{url}&token={forged}") == 401
    assert await ws_refusal(f"{url}&token=wrong-key-0123456789") == 401
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{auth_gw.http}{RECOGNIZE}", data=b"\0" * 3200) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Authentication required" in (await resp.json())["message"]
        headers = {"Authorization": f"Bearer {expired}"}
        async with http.put(f"{auth_gw.http}{RECOGNIZE}", data=b"", headers=headers) as resp:
            assert resp.status == 401
            assert "expired" in (await resp.json())["message"]
        async with http.get(f"{auth_gw.http}/healthz") as resp:
            assert resp.status == 200  # probes stay open


async def test_credentials_in_header_query_and_token(auth_gw: Cluster, espeak_wav) -> None:
    wav = espeak_wav(SHORT).read_bytes()
    by_query = await stream(speech_url(auth_gw.ws, token=CAROL), wav, realtime=False)
    assert by_query.status == 0 and by_query.text
    token = make_token(SECRET, "carol", 300)
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.put(f"{auth_gw.http}{RECOGNIZE}", data=wav, headers=headers) as resp:
            assert resp.status == 200
            assert (await resp.json())["hypotheses"][0]["utterance"] == by_query.text
    async with websockets.connect(
        speech_url(auth_gw.ws), additional_headers={"X-API-Key": CAROL}
    ) as ws:
        await ws.send(wav)
        await ws.send("EOS")
        messages = [json.loads(m) async for m in ws]
    assert messages and all(m["status"] == 0 for m in messages)


async def test_origin_of_a_foreign_page_is_refused(auth_gw: Cluster) -> None:
    url = speech_url(auth_gw.ws, token=CAROL)
    assert await ws_refusal(url, origin="http://evil.example") == 403
    async with websockets.connect(url, origin="https://app.example") as ws:
        await ws.send("EOS")  # allowed: a session that ends at once
        async for _ in ws:
            pass


async def test_concurrent_session_limit_is_released(auth_gw: Cluster, espeak_wav) -> None:
    wav = espeak_wav(SHORT).read_bytes()
    redis = auth_gw.gateway.redis
    async with websockets.connect(speech_url(auth_gw.ws, token=ALICE)) as first:
        await first.send(wav[:16000])
        async with asyncio.timeout(10 * UNIT):
            while not await redis.zcard(KEYS.key_sessions("alice")):
                await asyncio.sleep(0.05)
        second = await stream(speech_url(auth_gw.ws, token=ALICE), wav, realtime=False)
        assert [m["status"] for m in second.messages] == [6]
        assert "1 sessions open" in second.messages[0]["message"]
        async with aiohttp.ClientSession() as http:
            headers = {"X-API-Key": ALICE}
            async with http.put(f"{auth_gw.http}{RECOGNIZE}", data=wav, headers=headers) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) > 0
                assert (await r.json())["status"] == 6
        await first.send(wav[16000:])
        await first.send("EOS")
        async for _ in first:
            pass
    assert await redis.zcard(KEYS.key_sessions("alice")) == 0, "released when it ended"
    after = await stream(speech_url(auth_gw.ws, token=ALICE), wav, realtime=False)
    assert after.status == 0 and after.text


async def test_audio_seconds_limit(auth_gw: Cluster, espeak_wav) -> None:
    wav = espeak_wav(SHORT).read_bytes()  # about 3 s: more than bob's 1.5 s
    over = await stream(speech_url(auth_gw.ws, token=BOB), wav, realtime=False)
    assert over.status == 6 and "audio seconds" in over.messages[-1]["message"]
    assert over.close_code == 1000
    async with aiohttp.ClientSession() as http:
        headers = {"X-API-Key": BOB}
        async with http.put(f"{auth_gw.http}{RECOGNIZE}", data=wav, headers=headers) as resp:
            assert resp.status == 429
            assert 0 < int(resp.headers["Retry-After"]) <= 3600
    # Another key is not affected.
    other = await stream(speech_url(auth_gw.ws, token=CAROL), wav, realtime=False)
    assert other.status == 0 and other.text
