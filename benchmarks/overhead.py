"""What the cluster costs on top of decoding: the same clips, decoded directly and through it.

``direct``: ``n`` processes forked from one loaded engine each take clips from a shared
list and decode them with :func:`decoder_worker.recognizer.decode_pcm` — the
recogniser the worker runs, in forks of the engine (one per decoder epoch), exactly as
a worker's slot does, minus the gateway, Redis and the worker's plumbing. ``through_cluster``: ``n``
clients stream the same clips as fast as the cluster takes them (no real-time pacing)
through a gateway and one worker with ``n`` slots. Throughput is audio seconds per wall
second over the whole batch; the ratio of the two is the cluster's overhead figure.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

from benchmarks.common import RAW_CAPS
from ksc.client import speech_url, stream

_TEMPLATE: Any = None  # the loaded engine the direct decoders fork from
_RULES: Any = None
_CLIPS: list[bytes] = []


def _decode_one(index: int) -> str:
    from decoder_worker.forking import ForkingEngine
    from decoder_worker.recognizer import decode_pcm

    finals = decode_pcm(ForkingEngine(_TEMPLATE), _RULES, _CLIPS[index])
    return " ".join(f.text for f in finals)


def direct(engine: Any, rules: Any, clips: list[bytes], n: int) -> dict[str, Any]:
    """Decode every clip with ``n`` direct decoder processes; audio s per wall s."""
    global _TEMPLATE, _RULES, _CLIPS
    _TEMPLATE, _RULES, _CLIPS = engine, rules, clips
    ctx = multiprocessing.get_context("fork")
    t0 = time.monotonic()
    with ctx.Pool(n) as pool:
        texts = pool.map(_decode_one, range(len(clips)), chunksize=1)
    return _throughput(time.monotonic() - t0, clips, texts)


def _throughput(wall: float, clips: list[bytes], texts: list[str]) -> dict[str, Any]:
    audio = sum(len(c) for c in clips) / 32000
    return {
        "wall_s": round(wall, 2),
        "audio_s": round(audio, 2),
        "throughput": audio / wall,
        "texts": texts,
    }


async def _through_cluster(ws: str, clips: list[bytes], n: int) -> list[str]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(clips)):
        queue.put_nowait(i)
    texts = [""] * len(clips)

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            result = await stream(speech_url(ws, RAW_CAPS), clips[i], realtime=False)
            if result.status != 0:
                raise RuntimeError(f"session failed: {result.messages[-1]}")
            texts[i] = result.text

    await asyncio.gather(*(client() for _ in range(n)))
    return texts


def through_cluster(ws: str, clips: list[bytes], n: int) -> dict[str, Any]:
    t0 = time.monotonic()
    texts = asyncio.run(_through_cluster(ws, clips, n))
    return _throughput(time.monotonic() - t0, clips, texts)


def finalize_ms(engine: Any, clips: list[bytes]) -> list[float]:
    """The decoder's own finalize time: ``finish()`` of a whole clip in a fresh fork,
    after the decoder has caught up with the audio (what a final cannot be faster than)."""
    from decoder_worker.forking import ForkingEngine

    out = []
    for pcm in clips:
        fork = ForkingEngine(engine)
        fork.accept(pcm)
        fork.partial()  # waits until every block is decoded
        t0 = time.perf_counter()
        fork.finish()
        out.append((time.perf_counter() - t0) * 1000)
        fork.close()
    return out
