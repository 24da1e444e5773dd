"""``ksc transcribe --format srt|vtt`` through a real cluster: cues cut by word times,
and the gateway named by any of its URLs."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from pathlib import Path

import srt

from harness.cluster import KSC, Cluster
from harness.env import REPO, UNIT
from ksc.client import speech_url, stream
from ksc.subtitles import Rules

#: 9.3 s of speech, three sentences 0.45 s apart, which the endpointer keeps as one final.
SAMPLE = REPO / "shared" / "samples" / "ko-sample.wav"


def ksc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KSC, *args], capture_output=True, text=True, timeout=120 * UNIT)


async def test_a_ten_second_final_becomes_cues_cut_at_its_words(
    running: Cluster, tmp_path: Path
) -> None:
    """The session's finals carry word times; the subtitles of the same audio have
    several cues within the limits, each beginning at a word's start and ending at a
    word's end (or lengthened to 1 s), with every word of the transcript, in order."""
    live = await stream(speech_url(running.ws), SAMPLE.read_bytes(), realtime=False)
    assert live.status == 0
    starts, ends, words = set(), set(), []
    for final in live.finals:
        hypothesis = final["result"]["hypotheses"][0]
        alignment = hypothesis["word-alignment"]
        assert [w["word"] for w in alignment] == hypothesis["transcript"].split()
        starts |= {round(w["start"], 3) for w in alignment}
        ends |= {round(w["start"] + w["length"], 3) for w in alignment}
        words += hypothesis["transcript"].split()
    assert max(f["segment-length"] for f in live.finals) > Rules().max_seconds  # must be cut

    # The CLI, given the websocket URL `ksc up` prints, as a user pastes it.
    out = tmp_path / "sample.srt"
    done = await asyncio.to_thread(
        ksc, "transcribe", "--url", f"{running.ws}/client/ws/speech", "--format", "srt",
        "-o", str(out), str(SAMPLE),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cues = list(srt.parse(out.read_text(encoding="utf-8")))
    rules = Rules()
    assert len(cues) >= 2, cues
    assert [w for c in cues for w in c.content.split()] == words
    for before, after in itertools.pairwise(cues):
        assert before.end <= after.start
    for cue in cues:
        lines = cue.content.split("\n")
        assert len(lines) <= rules.max_lines and all(len(x) <= rules.max_chars for x in lines)
        start, end = cue.start.total_seconds(), cue.end.total_seconds()
        assert 0 < end - start <= rules.max_seconds
        assert start in starts, (start, sorted(starts))
        assert end in ends or round(end - start, 3) == rules.min_seconds, (end, sorted(ends))

    # WebVTT of the same, over http:// and the HTTP endpoint's URL with a slash.
    vtt = await asyncio.to_thread(
        ksc, "transcribe", "--url", f"{running.http}/client/dynamic/recognize/", "--format",
        "vtt", str(SAMPLE),
    )  # fmt: skip
    assert vtt.returncode == 0, vtt.stderr
    assert vtt.stdout.startswith("WEBVTT\n\n") and vtt.stdout.count(" --> ") == len(cues)
