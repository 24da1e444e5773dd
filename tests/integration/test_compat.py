"""Rows of the README's compatibility table that no other test covers on its own."""

from __future__ import annotations

import json
import logging

import pytest
import websockets

from harness.cluster import Cluster
from harness.media import pcm_of
from harness.speech import FRAME, SENTENCE, assert_well_formed
from ksc.client import speech_url

RAW = "audio/x-raw, rate=(int)16000, format=(string)S16LE, channels=(int)1"


async def test_ids_are_logged_and_adaptation_state_is_ignored(
    running: Cluster, espeak_wav, reference_decode, caplog: pytest.LogCaptureFixture
) -> None:
    """``user-id``/``content-id`` reach the log; an ``adaptation_state`` message changes
    nothing: the transcript is the reference decode of the audio."""
    pcm = pcm_of(espeak_wav(SENTENCE))
    url = speech_url(running.ws, RAW, **{"user-id": "alice", "content-id": "talk-17"})
    adaptation = json.dumps({"adaptation_state": {"type": "string+gzip+base64", "value": "eA=="}})
    with caplog.at_level(logging.INFO, logger="gateway"):
        async with websockets.connect(url) as ws:
            half = len(pcm) // 2 // 2 * 2
            await ws.send(pcm[:half])
            await ws.send(adaptation)
            await ws.send(pcm[half:])
            await ws.send("EOS")
            messages = [json.loads(m) async for m in ws]
    assert_well_formed(messages)
    finals = [
        (m["segment"], m["result"]["hypotheses"][0]["transcript"])
        for m in messages
        if m["result"]["final"]
    ]
    assert finals == [(f.segment, f.text) for f in reference_decode(pcm)]
    assert ws.close_code == 1000
    started = [r.getMessage() for r in caplog.records if "session started" in r.getMessage()]
    assert any("'alice'" in s and "'talk-17'" in s for s in started), started


async def test_vosk_reset_answers_text_and_the_session_goes_on(
    running: Cluster, espeak_wav
) -> None:
    pcm = pcm_of(espeak_wav(SENTENCE))
    async with websockets.connect(running.ws + "/vosk") as ws:
        await ws.send('{"config": {"sample_rate": 16000}}')
        half = len(pcm) // 2 // FRAME * FRAME
        for start in range(0, half, FRAME):
            await ws.send(pcm[start : start + FRAME])
            assert set(json.loads(await ws.recv())) <= {"partial", "result", "text"}
        await ws.send('{"reset": 1}')
        assert "text" in set(json.loads(await ws.recv())) <= {"result", "text"}
        for start in range(half, len(pcm), FRAME):
            await ws.send(pcm[start : start + FRAME])
            assert set(json.loads(await ws.recv())) <= {"partial", "result", "text"}
        await ws.send('{"eof": 1}')
        last = [json.loads(m) async for m in ws]
    assert len(last) == 1 and "text" in set(last[0]) <= {"result", "text"}, last
    assert ws.close_code == 1000
