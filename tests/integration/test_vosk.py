"""vosk-server's websocket dialect against the real cluster, with a real websocket client."""

from __future__ import annotations

import json
from contextlib import suppress

import aiohttp
import websockets

from harness.cluster import Cluster
from harness.media import pcm_of
from harness.speech import COMMANDS, FRAME, SENTENCE
from shared.protocol import Status


async def converse(url: str, pcm: bytes, config: str | None) -> tuple[list[dict], int, int | None]:
    """Send like vosk's test.py: config, frames each followed by a recv, eof, then read
    until the server closes. Returns the replies, the messages sent and the close code."""
    replies: list[dict] = []
    sent = 0
    async with websockets.connect(url, max_size=None) as ws:
        if config is not None:
            await ws.send(config)
        for start in range(0, len(pcm), FRAME):
            await ws.send(pcm[start : start + FRAME])
            sent += 1
            replies.append(json.loads(await ws.recv()))
        await ws.send('{"eof" : 1}')
        sent += 1
        async for raw in ws:
            replies.append(json.loads(raw))
    return replies, sent, ws.close_code


async def test_vosk_client_gets_the_kgs_transcript(
    running: Cluster, espeak_wav, reference_decode
) -> None:
    """At ``/``: one reply per audio message and one for eof, shaped as vosk-server's;
    the finals are the direct decode's; the server closes after the last reply."""
    pcm = pcm_of(espeak_wav(SENTENCE))
    # Any spacing; a field vosk-server does not know is ignored, as there.
    config = '{ "config" :{"sample_rate":16000 ,"words": true, "colour": 1} }'
    replies, sent, code = await converse(running.ws + "/", pcm, config)
    assert len(replies) == sent, "exactly one reply per audio or eof message"
    assert code == 1000
    for reply in replies:
        assert set(reply) in ({"partial"}, {"text"}, {"result", "text"}), reply
    assert "text" in replies[-1]
    finals = [r["text"] for r in replies if r.get("text")]
    assert " ".join(finals) == " ".join(f.text for f in reference_decode(pcm))
    # "words": true: each final's word entries, vosk-server's shape
    for reply in replies:
        if reply.get("text"):
            assert [w["word"] for w in reply["result"]] == reply["text"].split()


async def test_vosk_phrase_list_at_8khz(running: Cluster, espeak_wav) -> None:
    """``/vosk``, 8 kHz audio (resampled by the gateway), a phrase list: the command."""
    pcm = pcm_of(espeak_wav("음악 틀어", rate=8000))
    config = json.dumps(
        {"config": {"sample_rate": 8000.0, "phrase_list": COMMANDS}}, ensure_ascii=False
    )
    replies, sent, code = await converse(running.ws + "/vosk", pcm, config)
    assert len(replies) == sent and code == 1000
    assert " ".join(r["text"] for r in replies if r.get("text")) == "음악 틀어"


async def test_vosk_phrase_list_drops_words_the_model_lacks(running: Cluster, espeak_wav) -> None:
    """As vosk-server: unknown words (and empty phrases) are dropped, the rest kept."""
    pcm = pcm_of(espeak_wav("음악 틀어"))
    phrases = [*COMMANDS, "뀱뀱 뀱뀱", "", "음악 뀱뀱 틀어"]
    config = json.dumps({"config": {"phrase_list": phrases}}, ensure_ascii=False)
    replies, sent, code = await converse(running.ws, pcm, config)
    assert len(replies) == sent and code == 1000
    assert " ".join(r["text"] for r in replies if r.get("text")) == "음악 틀어"


async def test_vosk_errors_reply_and_close(running: Cluster) -> None:
    cases = [
        ("{not json", Status.NOT_ALLOWED, "not JSON"),
        ('{"config": {"max_alternatives": 3}}', Status.NOT_ALLOWED, "max_alternatives"),
        ('{"config": {"sample_rate": "fast"}}', Status.NOT_ALLOWED, "sample_rate"),
        ('{"hello": 1}', Status.NOT_ALLOWED, "Unsupported"),
        # as vosk-server, a word the model lacks is dropped; a list left empty is refused
        ('{"config": {"phrase_list": ["뀱뀱", "뀱뀱 뀱뀱"]}}', Status.BAD_GRAMMAR, "뀱뀱"),
        ('{"config": {"phrase_list": []}}', Status.BAD_GRAMMAR, "empty"),
    ]
    for text, status, words in cases:
        async with websockets.connect(running.ws + "/vosk") as ws:
            await ws.send(text)
            with suppress(websockets.ConnectionClosed):  # the error may close it first
                await ws.send(bytes(FRAME))  # a phrase list is checked once audio starts
            raw = []
            with suppress(websockets.ConnectionClosed):  # a close code other than 1000
                while True:
                    raw.append(await ws.recv())
        error = json.loads(raw[-1])
        assert error["status"] == status and words in error["error"], (text, raw)
        assert ws.close_code == 1008, text


async def test_root_still_serves_the_page(running: Cluster) -> None:
    async with aiohttp.ClientSession() as http, http.get(running.http + "/") as reply:
        assert reply.status == 200
        assert reply.content_type == "text/html"
