"""Word times on finals, against the real cluster with real clients.

kaldi-gstreamer-server's ``word-alignment``, vosk-server's ``result`` word entries as
its ``test_words.py`` and ``test_srt.py`` clients read them (both written here from
what those clients do), the HTTP reply; a final whose alignment fails still arrives,
without times, and is counted; and the times agree with the ``vosk`` package's on the
recordings.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import wave
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from harness.cluster import Cluster
from harness.env import TESTDATA, UNIT
from harness.media import pcm_of, read_wav, sentences_pcm
from harness.scoring import read_manifest
from harness.speech import SENTENCE, SENTENCES, assert_well_formed
from harness.word_times import MID_WORD_CUT_S, Word, agreement, vosk_words
from ksc.client import speech_url, stream
from tests.integration.conftest import METRICS_PORTS

RAW = "audio/x-raw, rate=(int)16000, format=(string)S16LE, channels=(int)1"
#: A word's times may be off its segment's bounds by the rounding to milliseconds.
EPS = 0.0015


def _assert_in_order(words: list[dict[str, Any]], lo: float, hi: float) -> None:
    """Every word inside [lo, hi], none ending before it starts, each after the last."""
    previous = lo
    for word in words:
        assert lo - EPS <= word["start"] <= word["end"] <= hi + EPS, (word, lo, hi)
        assert word["start"] >= previous - EPS, (word, previous)
        previous = word["end"]


async def test_kgs_finals_carry_word_alignment(running: Cluster, tmp_path: Path) -> None:
    """A client.py-style session over three sentences: every final's hypothesis has
    ``word-alignment`` entries (gst-kaldi-nnet2-online's keys) for exactly its words,
    times in stream seconds inside the final's segment, in order."""
    pcm = sentences_pcm(tmp_path, SENTENCES)
    result = await stream(speech_url(running.ws, RAW), pcm, realtime=False)
    assert_well_formed(result.messages)
    assert len(result.finals) >= 2
    for final in result.finals:
        hypothesis = final["result"]["hypotheses"][0]
        alignment = hypothesis["word-alignment"]
        assert [w["word"] for w in alignment] == hypothesis["transcript"].split()
        for w in alignment:
            assert set(w) == {"word", "start", "length", "confidence"}
            assert w["length"] >= 0 and w["confidence"] == 1.0
        words = [{"start": w["start"], "end": w["start"] + w["length"]} for w in alignment]
        start = final["segment-start"]
        _assert_in_order(words, start, start + final["segment-length"])
    # none of the partials carries times: the lattice exists only once an utterance ends
    partials = [m for m in result.messages if not m["result"]["final"]]
    assert all("word-alignment" not in m["result"]["hypotheses"][0] for m in partials)


async def test_http_recognize_carries_word_alignment(running: Cluster, espeak_wav) -> None:
    body = espeak_wav(SENTENCE).read_bytes()
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{running.http}/client/dynamic/recognize", data=body) as reply,
    ):
        answer = await reply.json()
    hypothesis = answer["hypotheses"][0]
    assert [w["word"] for w in hypothesis["word-alignment"]] == hypothesis["utterance"].split()


# --- vosk-server's clients ------------------------------------------------------------


def _english_wav(text: str, out: Path) -> Path:
    """English speech (espeak-ng's default voice) as a 16 kHz mono WAV."""
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en", "-s", "130", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True)
    return out


async def test_vosk_words_client_gets_words_with_times(running: Cluster, tmp_path: Path) -> None:
    """Like vosk-server's ``websocket/test_words.py``: a config with ``words`` and an
    English phrase list (the Korean model spells those words in capitals), 0.2 s of
    audio per message, every reply printed; the results' words carry times."""
    wav_path = _english_wav("one two three four five", tmp_path / "digits.wav")
    printed: list[str] = []
    async with websockets.connect(running.ws) as websocket:
        with wave.open(str(wav_path), "rb") as wf:
            rate = wf.getframerate()
            await websocket.send(
                f'{{"config" : {{ "phrase_list" : ["zero one two three four five", '
                f'"six seven eight nine oh"], "sample_rate" : {rate}, "words" : 1}}}}'
            )
            buffer_size = int(wf.getframerate() * 0.2)
            while True:
                data = wf.readframes(buffer_size)
                if len(data) == 0:
                    break
                await websocket.send(data)
                printed.append(await websocket.recv())
        await websocket.send('{"eof" : 1}')
        printed.append(await websocket.recv())
    replies = [json.loads(p) for p in printed]
    results = [r for r in replies if r.get("text")]
    assert results, printed
    phrases = {"ZERO ONE TWO THREE FOUR FIVE", "SIX SEVEN EIGHT NINE OH"}
    for reply in results:
        assert reply["text"] in phrases, reply
        entries = reply["result"]
        assert [e["word"] for e in entries] == reply["text"].split()
        assert all(set(e) == {"conf", "end", "start", "word"} for e in entries)
        duration = wave.open(str(wav_path)).getnframes() / 16000
        _assert_in_order(entries, 0.0, duration)


def _srt_cues(replies: list[dict[str, Any]], words_per_line: int = 7) -> list[str]:
    """What ``test_srt.py`` builds: a cue per ``words_per_line`` word entries of each
    result, from the first entry's start to the last one's end."""

    def clock(seconds: float) -> str:
        ms = round(seconds * 1000)
        return (
            f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
        )

    cues = []
    for reply in replies:
        words = reply.get("result", [])
        for j in range(0, len(words), words_per_line):
            line = words[j : j + words_per_line]
            text = " ".join(w["word"] for w in line)
            cues.append(f"{clock(line[0]['start'])} --> {clock(line[-1]['end'])}\n{text}")
    return cues


async def test_vosk_srt_client_gets_several_cues(running: Cluster, tmp_path: Path) -> None:
    """Like vosk-server's ``websocket/test_srt.py``: no config (word entries are on by
    default, as in vosk-server), 8000-byte messages, then SRT cues from the entries."""
    pcm = sentences_pcm(tmp_path, [" ".join(SENTENCES)] * 2)  # about 13 s, two segments
    results: list[str] = []
    async with websockets.connect(running.ws) as websocket:
        for start in range(0, len(pcm), 8000):
            await websocket.send(pcm[start : start + 8000])
            results.append(await websocket.recv())
        await websocket.send('{"eof" : 1}')
        results.append(await websocket.recv())
    cues = _srt_cues([json.loads(r) for r in results])
    assert len(cues) >= 3, cues
    times = [re.findall(r"\d\d:\d\d:\d\d,\d\d\d", cue) for cue in cues]
    assert all(start < end for start, end in times), cues
    assert [t[0] for t in times] == sorted(t[0] for t in times), cues


# --- failure: words without times -----------------------------------------------------


async def _alignment_failures() -> float:
    total = 0.0
    async with aiohttp.ClientSession() as http:
        for port in METRICS_PORTS.values():
            async with http.get(f"http://127.0.0.1:{port}/metrics") as reply:
                text = await reply.text()
            found = re.search(r"^ksc_worker_word_alignment_failures_total (\S+)$", text, re.M)
            assert found, "the metric is exported"
            total += float(found.group(1))
    return total


async def test_a_final_cut_mid_word_arrives_without_times(running: Cluster, espeak_wav) -> None:
    """Audio that ends inside a word: the lattice is forced out and cannot be aligned.
    The final still arrives with its words, without ``word-alignment`` (vosk: without
    ``result``), and the failure is counted."""
    pcm = pcm_of(espeak_wav(SENTENCE, pad=False))[: int(MID_WORD_CUT_S * 16000) * 2]
    before = await _alignment_failures()
    result = await stream(speech_url(running.ws, RAW), pcm, realtime=False)
    assert_well_formed(result.messages)
    last = result.finals[-1]["result"]["hypotheses"][0]
    assert last["transcript"] and "word-alignment" not in last
    # the same audio in the vosk dialect: the final's text, no word entries
    async with websockets.connect(running.ws) as ws:
        await ws.send(pcm)
        await ws.recv()
        await ws.send('{"eof" : 1}')
        replies = [json.loads(raw) async for raw in ws]
    assert replies[-1]["text"].endswith(last["transcript"]) and "result" not in replies[-1]
    async with asyncio.timeout(10 * UNIT):
        while await _alignment_failures() < before + 2:
            await asyncio.sleep(0.1)


# --- agreement with the vosk package --------------------------------------------------


@pytest.mark.skipif(not (TESTDATA / "manifest.tsv").exists(), reason="no test recordings")
@pytest.mark.timeout(900 * UNIT)
async def test_word_times_agree_with_vosk(running: Cluster) -> None:
    """On the 22 recordings, at least 90 % of the words both decoders produced have
    start and end within 0.1 s of the ``vosk`` package's (``SetWords(True)``) on the
    same model. (``python -m benchmarks.word_times`` measures the larger set too.)"""
    paths = [path for path, _ in read_manifest(TESTDATA)]
    vosk = asyncio.create_task(asyncio.to_thread(vosk_words, paths))  # meanwhile, ours
    both_workers = asyncio.Semaphore(2)

    async def ours(path: Path) -> list[Word]:
        async with both_workers:
            result = await stream(speech_url(running.ws, RAW), read_wav(path), realtime=False)
        return [
            (w["word"], w["start"], w["start"] + w["length"])
            for final in result.finals
            for w in final["result"]["hypotheses"][0].get("word-alignment", [])
        ]

    found = await asyncio.gather(*(ours(path) for path in paths))
    theirs = await vosk
    total = agreement([], [])
    for path, words in zip(paths, found, strict=True):
        total += agreement(words, theirs[path])
    assert total.matched > 200, total
    assert total.ratio >= 0.9, total
