"""Post-processors with kaldi-gstreamer-server's protocols, as real scripts run by a
real worker: one that appends a marker, one that hangs, one that exits, and a full
(JSON) post-processor."""

from __future__ import annotations

import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.app import serve
from harness.cluster import Cluster, start_worker, stop, wait_for_workers
from ksc.client import speech_url, stream
from shared.config import GatewaySettings
from shared.keys import Keys

PREFIX = "post"
KEYS = Keys(PREFIX)
SENTENCE = "안녕하세요. 오늘은 날씨가 아주 좋습니다."

#: The line post-processor; what it does with each line is read from a file.
LINE = """
import sys, time, pathlib
mode = pathlib.Path(sys.argv[1])
for line in sys.stdin:
    what = mode.read_text().strip()
    if what == "hang":
        time.sleep(3600)
    if what == "exit":
        sys.exit(3)
    print(line.strip() + " <pp>", flush=True)
"""

#: The full post-processor: JSON plus an empty line in and out.
FULL = """
import json, sys
lines = []
for line in sys.stdin:
    if line.strip():
        lines.append(line)
        continue
    msg = json.loads("".join(lines))
    lines = []
    hyp = msg["result"]["hypotheses"][0]
    hyp["transcript"] = "[" + hyp["transcript"] + "]"
    msg["post-processed"] = True
    print(json.dumps(msg, ensure_ascii=False))
    print(flush=True)
"""


@pytest.fixture(scope="module")
async def post_cluster(
    redis_server: str, prepared_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Cluster, Path]]:
    folder = tmp_path_factory.mktemp("post")
    (folder / "line.py").write_text(LINE)
    (folder / "full.py").write_text(FULL)
    mode = folder / "mode"
    mode.write_text("ok")
    python = sys.executable
    url = f"{redis_server}/0"
    procs = {
        "line-1": start_worker(
            url,
            "line-1",
            prefix=PREFIX,
            extra=[
                "--model-id",
                "ko",
                "--post-processor",
                f"{python} {folder / 'line.py'} {mode}",
                "--post-processor-timeout",
                "1",
            ],
        ),
        "full-1": start_worker(
            url,
            "full-1",
            prefix=PREFIX,
            extra=[
                "--model-id",
                "ko-full",
                "--full-post-processor",
                f"{python} {folder / 'full.py'}",
            ],
        ),
    }
    try:
        redis = Redis.from_url(url)
        await wait_for_workers(redis, KEYS, 2)
        await redis.aclose()
        settings = GatewaySettings(redis_url=url, prefix=PREFIX, host="127.0.0.1", port=0)
        async with serve(settings) as (gateway, port):
            yield Cluster(url, gateway, port, procs), mode
    finally:
        stop(*procs.values())


@pytest.fixture(scope="module")
def expected(espeak_wav: Any, reference_decode: Any) -> tuple[bytes, list[str]]:
    wav = espeak_wav(SENTENCE)
    with wave.open(str(wav)) as w:
        texts = [f.text for f in reference_decode(w.readframes(w.getnframes()))]
    assert texts
    return wav.read_bytes(), texts


async def test_line_post_processor(
    post_cluster: tuple[Cluster, Path], expected: tuple[bytes, list[str]]
) -> None:
    cluster, mode = post_cluster
    audio, texts = expected
    mode.write_text("ok")
    result = await stream(speech_url(cluster.ws), audio, realtime=False)
    assert result.status == 0 and result.close_code == 1000, result.messages
    hyps = [f["result"]["hypotheses"][0] for f in result.finals]
    assert [h["transcript"] for h in hyps] == [t + " <pp>" for t in texts]
    assert [h["original-transcript"] for h in hyps] == texts
    # the times stay those of the decoder's words, the original transcript's
    assert [[w["word"] for w in h["word-alignment"]] for h in hyps] == [t.split() for t in texts]
    partials = [m for m in result.messages if not m["result"]["final"]]
    assert all(p["result"]["hypotheses"][0]["transcript"].endswith(" <pp>") for p in partials)


@pytest.mark.parametrize("fault", ["hang", "exit"])
async def test_a_broken_post_processor_leaves_finals_unprocessed_and_is_restarted(
    post_cluster: tuple[Cluster, Path], expected: tuple[bytes, list[str]], fault: str
) -> None:
    cluster, mode = post_cluster
    audio, texts = expected
    mode.write_text(fault)
    broken = await stream(speech_url(cluster.ws), audio, realtime=False)
    assert broken.status == 0 and broken.close_code == 1000, broken.messages
    hyps = [f["result"]["hypotheses"][0] for f in broken.finals]
    assert [h["transcript"] for h in hyps] == texts  # unprocessed, nothing lost
    assert all("original-transcript" not in h for h in hyps)
    # The worker lives on and a fresh processor serves the next session.
    mode.write_text("ok")
    again = await stream(speech_url(cluster.ws), audio, realtime=False)
    assert [f["result"]["hypotheses"][0]["transcript"] for f in again.finals] == [
        t + " <pp>" for t in texts
    ]
    assert all(proc.poll() is None for proc in cluster.workers.values())


async def test_full_post_processor(
    post_cluster: tuple[Cluster, Path], expected: tuple[bytes, list[str]]
) -> None:
    cluster, _ = post_cluster
    audio, texts = expected
    result = await stream(speech_url(cluster.ws, model="ko-full"), audio, realtime=False)
    assert result.status == 0 and result.close_code == 1000, result.messages
    assert [f["result"]["hypotheses"][0]["transcript"] for f in result.finals] == [
        f"[{t}]" for t in texts
    ]
    assert all(f["post-processed"] is True for f in result.finals)
    assert [f["segment"] for f in result.finals] == list(range(len(texts)))
    assert {f["id"] for f in result.messages} == {result.messages[0]["id"]}
    # The durable copy in the results stream is the processed one too.
    sid = result.messages[0]["id"]
    entries = await cluster.gateway.redis.xrange(KEYS.results(sid))
    assert len(entries) == len(texts) and b"post-processed" in entries[0][1][b"event"]


# --- the processors alone, with real scripts (no cluster) --------------------------


def _final(text: str) -> Any:
    from shared.wire import FinalResult

    return FinalResult(segment=3, text=text, likelihood=-1.5, start=0.5, length=1.0, total=2.0)


async def test_a_busy_line_processor_skips_partials_but_finals_wait(tmp_path: Path) -> None:
    import asyncio

    from decoder_worker.postprocess import PostProcessors

    slow = tmp_path / "slow.py"
    slow.write_text(
        "import sys, time\nfor line in sys.stdin:\n    time.sleep(0.3)\n"
        "    print(line.strip().upper(), flush=True)\n"
    )
    post = PostProcessors(line=f"{sys.executable} {slow}", timeout=10)
    try:
        first = asyncio.create_task(post.final(_final("abc"), "sid"))
        await asyncio.sleep(0)  # the final holds the processor now
        while post.line is not None and not post.line._cmd.lock.locked():
            await asyncio.sleep(0.01)
        assert await post.partial("partial") is None  # busy: skipped at once
        second = await post.final(_final("def"), "sid")  # waits its turn
        done = await first
        assert (done.text, done.original) == ("ABC", "abc")
        assert (second.text, second.original) == ("DEF", "def")
        assert await post.partial("xyz") == "XYZ"
        assert post.line is not None and post.line.restarts == 0
    finally:
        await post.close()


async def test_full_processor_garbage_is_not_used(tmp_path: Path) -> None:
    from decoder_worker.postprocess import PostProcessors

    bad = tmp_path / "bad.py"
    bad.write_text(
        "import sys\nfor line in sys.stdin:\n    if not line.strip():\n"
        '        print(\'{"result": {"hypotheses": []}}\')\n        print(flush=True)\n'
    )
    post = PostProcessors(full=f"{sys.executable} {bad}", timeout=5)
    try:
        final = await post.final(_final("abc"), "sid")
        assert final == _final("abc")  # empty hypotheses: sent unprocessed
        assert post.full is not None and post.full.restarts == 0  # still in step
    finally:
        await post.close()
