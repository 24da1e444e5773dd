"""Phrase-list grammars through the real cluster (kaldi-gstreamer-server dialect)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from redis.asyncio import Redis

from harness.cluster import Cluster
from harness.media import pcm_of
from harness.speech import COMMANDS
from ksc.client import speech_url, stream
from shared.keys import Keys
from shared.protocol import Status
from tests.integration.conftest import PREFIX

KEYS = Keys(PREFIX)
SENTENCE = "안녕하세요. 오늘은 날씨가 아주 좋습니다."


async def test_phrases_restrict_the_output(running: Cluster, espeak_wav, reference_decode) -> None:
    """Audio of one of ten commands comes back as exactly that command; dictation of the
    same audio does not."""
    wav = espeak_wav("음악 틀어")
    url = speech_url(running.ws, phrases=json.dumps(COMMANDS, ensure_ascii=False))
    result = await stream(url, wav.read_bytes(), realtime=False)
    assert result.status == 0, result.messages
    assert result.text == "음악 틀어"
    dictation = " ".join(f.text for f in reference_decode(pcm_of(wav)))
    assert dictation != "음악 틀어"


async def test_unknown_word_is_status_7_and_harms_no_one(
    running: Cluster, espeak_wav, reference_decode
) -> None:
    """A phrase with a word the model does not know ends that session with status 7 naming
    the word; a normal session running at the same time is unaffected."""
    normal_wav = espeak_wav(SENTENCE)
    bad_url = speech_url(running.ws, phrases=json.dumps(["불 켜", "불 뀱뀱"], ensure_ascii=False))
    normal, bad = await asyncio.gather(
        stream(speech_url(running.ws), normal_wav.read_bytes(), realtime=False),
        stream(bad_url, espeak_wav("불 켜").read_bytes(), realtime=False),
    )
    assert bad.status == Status.BAD_GRAMMAR
    assert "뀱뀱" in bad.messages[-1]["message"]
    assert not bad.finals
    assert normal.status == 0
    assert [f["result"]["hypotheses"][0]["transcript"] for f in normal.finals] == [
        f.text for f in reference_decode(pcm_of(normal_wav))
    ]


async def test_malformed_phrases_are_status_7(running: Cluster) -> None:
    """Refused at the gateway, and counted as rejects of reason ``bad_grammar``."""
    redis = Redis.from_url(running.redis_url)
    before = int(await redis.hget(KEYS.stats, "rejected:bad_grammar") or 0)
    cases = ("not json", "[]", '["불", 3]', json.dumps(["[unk]"]))
    for phrases in cases:
        result = await stream(speech_url(running.ws, phrases=phrases), b"", realtime=False)
        assert result.status == Status.BAD_GRAMMAR, (phrases, result.messages)
    after = int(await redis.hget(KEYS.stats, "rejected:bad_grammar") or 0)
    await redis.aclose()
    assert after - before == len(cases)


async def test_http_phrases(running: Cluster, espeak_wav) -> None:
    """The same query parameter on /client/dynamic/recognize: 400 with status 7 when bad."""
    async with aiohttp.ClientSession() as http:
        url = f"{running.http}/client/dynamic/recognize"
        bad = json.dumps(["불 뀱뀱"], ensure_ascii=False)
        body = espeak_wav("불 켜").read_bytes()
        async with http.post(url, params={"phrases": bad}, data=body) as reply:
            assert reply.status == 400
            answer = await reply.json()
        assert answer["status"] == Status.BAD_GRAMMAR and "뀱뀱" in answer["message"]
