"""Silence timeout (status 1) on the audio received, and ``out-dir``, through a real
worker configured by a kaldi-gstreamer-server style YAML file."""

from __future__ import annotations

import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.app import serve
from harness.cluster import Cluster, start_worker, stop, wait_for_workers
from harness.media import pcm_of
from ksc.client import speech_url, stream
from shared.config import GatewaySettings
from shared.keys import Keys

PREFIX = "silence"
KEYS = Keys(PREFIX)
RAW = "audio/x-raw, rate=16000, format=S16LE, channels=1"
TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
async def quiet_cluster(
    redis_server: str, prepared_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Cluster, Path]]:
    folder = tmp_path_factory.mktemp("silence")
    out_dir = folder / "audio"
    config = folder / "worker.yaml"
    config.write_text(
        f"use-nnet2: True\nsilence-timeout: {TIMEOUT_S}\nout-dir: {out_dir}\n"
        "decoder:\n  nnet-mode: 3\n  num-nbest: 1\n"
    )
    url = f"{redis_server}/0"
    proc = start_worker(
        url, "quiet-1", prefix=PREFIX, extra=["--model-id", "ko", "--config", str(config)]
    )
    try:
        redis = Redis.from_url(url)
        await wait_for_workers(redis, KEYS, 1)
        await redis.aclose()
        settings = GatewaySettings(redis_url=url, prefix=PREFIX, host="127.0.0.1", port=0)
        async with serve(settings) as (gateway, port):
            yield Cluster(url, gateway, port, {"quiet-1": proc}), out_dir
    finally:
        stop(proc)


async def test_audio_without_speech_ends_with_status_1(
    quiet_cluster: tuple[Cluster, Path],
) -> None:
    cluster, _ = quiet_cluster
    silence = bytes(int(2 * 16000 * (TIMEOUT_S + 3)))  # more than the timeout
    result = await stream(speech_url(cluster.ws, RAW), silence, eos=False, realtime=False)
    assert [m["status"] for m in result.messages] == [1], result.messages
    assert result.messages[0]["message"].startswith("No speech")
    assert result.close_code == 1000


async def test_speech_and_short_pauses_are_not_cut(
    quiet_cluster: tuple[Cluster, Path], espeak_wav: Any, reference_decode: Any
) -> None:
    """Pauses shorter than the timeout, and one slow utterance longer than it: the
    timeout counts audio without speech, not time without new words."""
    slow = pcm_of(espeak_wav("천천히 말하는 사람도 끝까지 인식됩니다", speed=80))
    pause = bytes(int(2 * 16000 * (TIMEOUT_S - 0.8)))
    pcm = pause + slow + pause + slow
    assert len(slow) / 32000 > TIMEOUT_S
    result = await stream(speech_url(cluster_ws(quiet_cluster), RAW), pcm, realtime=False)
    assert result.status == 0 and result.close_code == 1000, result.messages
    expected = [f.text for f in reference_decode(pcm)]
    assert [f["result"]["hypotheses"][0]["transcript"] for f in result.finals] == expected
    # out-dir: the worker saved exactly the audio it received.
    _, out_dir = quiet_cluster
    with wave.open(str(out_dir / f"{result.messages[0]['id']}.wav")) as wav:
        assert wav.getframerate() == 16000 and wav.getnchannels() == 1
        assert wav.readframes(wav.getnframes()) == pcm


async def test_http_no_speech_is_an_answer(quiet_cluster: tuple[Cluster, Path]) -> None:
    cluster, _ = quiet_cluster
    silence = bytes(int(2 * 16000 * (TIMEOUT_S + 3)))
    async with aiohttp.ClientSession() as http:
        url = f"{cluster.http}/client/dynamic/recognize"
        async with http.post(url, data=silence, headers={"Content-Type": RAW}) as resp:
            assert resp.status == 200
            body = json.loads(await resp.text())
    assert body["status"] == 1 and body["message"].startswith("No speech")


def cluster_ws(quiet: tuple[Cluster, Path]) -> str:
    return quiet[0].ws
