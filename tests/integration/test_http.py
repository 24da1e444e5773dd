"""``/client/dynamic/recognize`` and ``/client/dynamic/reference`` over real HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from harness.cluster import Cluster
from harness.env import UNIT
from harness.media import CODECS, encode, pcm_of
from shared.keys import Keys
from tests.integration.conftest import PREFIX

KEYS = Keys(PREFIX)
RECOGNIZE = "/client/dynamic/recognize"
REFERENCE = "/client/dynamic/reference"


@pytest.fixture(scope="module")
def speech_wav(testdata: Path) -> Path:
    """A real recording: the espeak-ng sentence decodes too unstably to compare texts."""
    return sorted((testdata / "clips").glob("*.wav"))[0]


@pytest.fixture(scope="module")
def reference_text(speech_wav: Path, reference_decode) -> str:  # type: ignore[no-untyped-def]
    return " ".join(f.text for f in reference_decode(pcm_of(speech_wav)))


async def test_chunked_upload_is_decoded_while_it_uploads(
    running: Cluster, speech_wav: Path, reference_text: str
) -> None:
    """A chunked PUT of raw PCM: audio reaches the session's stream before the body ends."""
    pcm = pcm_of(speech_wav)
    seen_streaming: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        half = len(pcm) // 2 // 8000 * 8000
        for i in range(0, half, 8000):
            yield pcm[i : i + 8000]
        # Before the rest is sent, the first half is on the Redis stream already.
        async with asyncio.timeout(20 * UNIT):
            while True:
                sids = list(running.gateway.sessions)
                lengths = [await running.gateway.redis.xlen(KEYS.audio(s)) for s in sids]
                if any(lengths):
                    seen_streaming.append(True)
                    break
                await asyncio.sleep(0.05)
        for i in range(half, len(pcm), 8000):
            yield pcm[i : i + 8000]

    headers = {
        "Content-Type": "audio/x-raw-int; rate=16000; channels=1",
        "Device-Id": "test-device",
        "Content-Id": "test-content",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{running.http}{RECOGNIZE}", data=body(), headers=headers) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        reply = await resp.json()
    assert seen_streaming == [True]
    assert list(reply) == ["status", "id", "hypotheses"]
    assert reply["status"] == 0 and reply["id"]
    (hypothesis,) = reply["hypotheses"]
    assert hypothesis["utterance"] == reference_text
    assert [w["word"] for w in hypothesis["word-alignment"]] == reference_text.split()


async def test_post_of_a_wav_file_is_detected(
    running: Cluster, speech_wav: Path, reference_text: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{running.http}{RECOGNIZE}", data=speech_wav.read_bytes()) as resp,
    ):
        assert resp.status == 200
        reply = await resp.json()
    assert reply["hypotheses"][0]["utterance"] == reference_text


async def test_post_of_webm_opus_with_its_media_type(running: Cluster, speech_wav: Path) -> None:
    data = encode(pcm_of(speech_wav), 16000, CODECS["webm-opus"])
    headers = {"Content-Type": "audio/webm;codecs=opus"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{running.http}{RECOGNIZE}", data=data, headers=headers) as resp,
    ):
        assert resp.status == 200
        reply = await resp.json()
    assert reply["status"] == 0 and reply["hypotheses"][0]["utterance"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_upload_as_in_kgs_readme(
    running: Cluster, speech_wav: Path, reference_text: str
) -> None:
    """``curl -T file URL``: a PUT, with ``Expect: 100-continue`` for larger files."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-T", str(speech_wav), f"{running.http}{RECOGNIZE}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    reply = json.loads(out)
    assert reply["status"] == 0
    (hypothesis,) = reply["hypotheses"]
    assert hypothesis["utterance"] == reference_text
    assert [w["word"] for w in hypothesis["word-alignment"]] == reference_text.split()


async def test_no_worker_is_503_with_retry_after(empty_gateway: Cluster, speech_wav: Path) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{empty_gateway.http}{RECOGNIZE}", data=speech_wav.read_bytes()) as resp,
    ):
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        reply = await resp.json()
    assert reply["status"] == 9 and reply["id"]
    assert reply["message"] == "No decoder available, try again later"


@pytest.mark.parametrize(
    ("content_type", "body", "code", "expect"),
    [
        ("audio/x-raw, rate=(int)abc", b"\0" * 3200, 400, "Malformed rate"),
        ("audio/x-raw; format=S24BE", b"\0" * 3200, 415, "Unsupported sample format"),
        ("", b"NOTAWAVEFILEATALL" * 100, 415, "not a WAV file"),
        ("audio/ogg", b"OggS" + bytes(range(256)) * 64, 415, "Undecodable OGG audio"),
        ("", b"fLaC\0\0\0\x22", 415, "Undecodable FLAC audio"),
        ("", b"RIFF\x24\0\0\0WAVEfmt ", 415, "inside the WAV header"),
    ],
)
async def test_bad_audio_is_a_4xx_with_the_status_message(
    running: Cluster, content_type: str, body: bytes, code: int, expect: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{running.http}{RECOGNIZE}", data=body, headers=headers) as resp,
    ):
        assert resp.status == code
        reply = await resp.json()
    assert reply["status"] == 5 and reply["id"]
    assert expect in reply["message"]


async def test_cors_preflight(running: Cluster) -> None:
    headers = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type, content-id",
    }
    async with aiohttp.ClientSession() as http:
        for path in (RECOGNIZE, REFERENCE):
            async with http.options(f"{running.http}{path}", headers=headers) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                methods = resp.headers["Access-Control-Allow-Methods"]
                assert "POST" in methods
                allowed = resp.headers["Access-Control-Allow-Headers"].lower()
                assert "content-type" in allowed and "content-id" in allowed
                assert int(resp.headers["Access-Control-Max-Age"]) > 0
        async with http.options(f"{running.http}{RECOGNIZE}", headers=headers) as resp:
            assert "PUT" in resp.headers["Access-Control-Allow-Methods"]


async def test_references_round_trip(running: Cluster) -> None:
    cid = f"content-{uuid.uuid4().hex[:8]}"
    text = "안녕하세요. 오늘은 날씨가 아주 좋습니다."
    url = f"{running.http}{REFERENCE}"
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Id": cid, "User-Id": "tester", "Content-Type": "text/plain"}
        async with http.post(url, data=text.encode(), headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get(url, params={"content-id": cid}) as resp:
            assert resp.status == 200
            one = await resp.json()
        async with http.get(url) as resp:
            assert resp.status == 200
            every = await resp.json()
        async with http.get(url, params={"content-id": "no-such-id"}) as resp:
            assert resp.status == 404
        async with http.post(url, data=b"text") as resp:
            assert resp.status == 400
            assert "No Content-Id" in (await resp.json())["message"]
        async with http.post(url, data=b"\xff\xfe", headers={"Content-Id": "x"}) as resp:
            assert resp.status == 400
    assert one["content-id"] == cid and one["content"] == text and one["user_id"] == "tester"
    assert every[cid] == {k: one[k] for k in ("content", "user_id", "time")}
    # Kept per key (auth off: everyone's together) for reference_ttl after the last write.
    redis = running.gateway.redis
    assert await redis.hexists(KEYS.key_references("anonymous"), cid)
    assert 0 < await redis.ttl(KEYS.key_references("anonymous")) <= 30 * 86400
