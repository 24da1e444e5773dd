"""Live streams against a server: ours (kaldi-gstreamer-server dialect) or the vosk baseline.

Each stream sends a clip's PCM in quarter-second frames, paced in real time as a
microphone would, then ends it (``EOS`` / ``{"eof" : 1}``) and waits for the server to
close. Times are taken on the client: when each frame was sent, when each partial and
final arrived. ``final latency`` is from the end of the audio (the end-of-stream message)
to the last final. A concurrency level is *sustained in real time* when the p95 of the
final latencies stays under :data:`SUSTAIN_LIMIT_S`: a server that decodes slower than
real time builds a backlog that shows up there, growing with the clip length.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets

from benchmarks.common import RAW_CAPS
from harness.measure import cpu_seconds, percentile
from ksc.client import speech_url

FRAME_BYTES = 8000  # 0.25 s of 16 kHz s16 mono
SUSTAIN_LIMIT_S = 1.0
REAP_WAIT_S = 1.0


@dataclass
class StreamResult:
    audio_s: float
    started: float = 0.0
    eos_at: float = 0.0
    closed_at: float = 0.0
    final_at: float = 0.0
    partial_at: list[float] = field(default_factory=list)
    text: str = ""
    error: str = ""

    @property
    def final_latency(self) -> float:
        # A final the endpointer sent before the end of the stream: the close ends it.
        end = self.final_at if self.final_at >= self.eos_at else self.closed_at
        return end - self.eos_at

    def partial_intervals(self) -> list[float]:
        """Gaps between partials while audio flows (after the first partial, before EOS)."""
        times = [t for t in self.partial_at if t <= self.eos_at]
        return [b - a for a, b in itertools.pairwise(times)]


async def _pace(ws: Any, pcm: bytes, result: StreamResult, eos: str | bytes) -> None:
    start = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), FRAME_BYTES)):
        delay = start + n * 0.25 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(pcm[i : i + FRAME_BYTES])
    await asyncio.sleep(max(0.0, start + len(pcm) / 32000 - time.monotonic()))
    result.eos_at = time.monotonic()
    await ws.send(eos)


async def _session(
    url: str,
    pcm: bytes,
    config: str | None,
    eos: str,
    read: Callable[[StreamResult, dict[str, Any]], str | None],
) -> StreamResult:
    """One paced stream; ``read`` notes a reply's partial or error on the result and
    returns a final's text (``None`` for any other reply)."""
    result = StreamResult(audio_s=len(pcm) / 32000, started=time.monotonic())
    texts = []
    try:
        async with websockets.connect(url, max_size=None) as ws:
            if config is not None:
                await ws.send(config)
            sender = asyncio.create_task(_pace(ws, pcm, result, eos))
            async for raw in ws:
                text = read(result, json.loads(raw))
                if text is not None:
                    result.final_at = time.monotonic()
                    if text:
                        texts.append(text)
            await sender
    except (OSError, websockets.WebSocketException) as exc:
        result.error = repr(exc)
    result.closed_at = time.monotonic()
    result.text = " ".join(texts)
    return result


def _read_ours(result: StreamResult, message: dict[str, Any]) -> str | None:
    if message.get("status", 0) != 0:
        result.error = message.get("message", str(message))
    res = message.get("result")
    if res is None:
        return None
    if res.get("final"):
        return str(res["hypotheses"][0]["transcript"])
    result.partial_at.append(time.monotonic())
    return None


def _read_vosk(result: StreamResult, message: dict[str, Any]) -> str | None:
    if "text" in message:
        return str(message["text"])
    if message.get("partial"):
        result.partial_at.append(time.monotonic())
    return None


async def stream_ours(base: str, pcm: bytes) -> StreamResult:
    return await _session(speech_url(base, RAW_CAPS), pcm, None, "EOS", _read_ours)


async def stream_vosk(url: str, pcm: bytes) -> StreamResult:
    config = json.dumps({"config": {"sample_rate": 16000}})
    return await _session(url, pcm, config, '{"eof" : 1}', _read_vosk)


async def level(
    kind: str, url: str, clips: list[bytes], concurrency: int, server_pid: int | None = None
) -> dict[str, Any]:
    """``concurrency`` live streams at once (clips taken in turn), started 50 ms apart.

    With ``server_pid``, also the CPU the server and the descendants it reaped (a
    worker's session and utterance processes) spent per audio second."""
    client = stream_ours if kind == "ours" else stream_vosk
    cpu_before = cpu_seconds(server_pid, children=True) if server_pid else 0.0

    async def one(i: int) -> StreamResult:
        await asyncio.sleep(i * 0.05)
        return await client(url, clips[i % len(clips)])

    results = await asyncio.gather(*(one(i) for i in range(concurrency)))
    latencies = [r.final_latency for r in results]
    start = min(r.started for r in results)
    end = max(r.final_at or r.closed_at for r in results)
    audio = sum(r.audio_s for r in results)
    p95 = percentile(latencies, 95)
    errors = [r.error for r in results if r.error]
    cpu = None
    if server_pid:
        await asyncio.sleep(REAP_WAIT_S)  # the last session processes end after the close
        cpu = round((cpu_seconds(server_pid, children=True) - cpu_before) / audio, 3)
    return {
        "concurrency": concurrency,
        "final_latency_s": [round(x, 3) for x in latencies],
        "final_latency_p95_s": round(p95, 3),
        "partial_intervals_s": [round(x, 3) for r in results for x in r.partial_intervals()],
        "throughput_audio_s_per_s": round(audio / (end - start), 3),
        "server_cpu_per_audio_s": cpu,
        "sustained": not errors and p95 <= SUSTAIN_LIMIT_S,
        "errors": errors,
        "texts": [r.text for r in results],
    }


def main(argv: list[str] | None = None) -> None:
    """Live-stream levels against a private cluster only, e.g. to try worker settings."""
    import argparse
    import os
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.common import clips, cluster
    from harness.cluster import redis_server

    parser = argparse.ArgumentParser(description="live streams against a private cluster")
    parser.add_argument("--levels", default="1,2", help="comma-separated concurrency levels")
    parser.add_argument("--clips", type=int, default=4, help="the N longest test clips")
    parser.add_argument("--partial-interval", type=float, help="the worker's setting")
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy's collapsed stacks of the worker and its session and utterance "
        "processes, over the first level",
    )
    args = parser.parse_args(argv)

    levels = [int(x) for x in args.levels.split(",")]
    pcms = [pcm for _, _, pcm in clips(args.clips)]
    cache = os.environ.get("KSC_CACHE") or str(Path.home() / ".cache" / "kaldi-stream-cluster")
    extra = ["--partial-interval", str(args.partial_interval)] if args.partial_interval else []
    intervals: list[float] = []
    with redis_server() as url, cluster(url, max(levels), cache, worker_args=extra) as cl:
        for n, c in enumerate(levels):
            spy = None
            if args.profile is not None and n == 0:
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(cl["worker_pid"]),
                        "--subprocesses",
                        "--duration",
                        "10",
                        "--rate",
                        "100",
                        "--format",
                        "raw",
                        "--output",
                        str(args.profile),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            row = asyncio.run(level("ours", cl["ws"], pcms, c, cl["worker_pid"]))
            if spy is not None:
                spy.wait()
            intervals += row["partial_intervals_s"]
            print(json.dumps({k: v for k, v in row.items() if k != "texts"}))
    ms = [x * 1000 for x in intervals]
    print(
        json.dumps(
            {
                "partial_interval_setting": args.partial_interval or "default",
                "partials": len(ms),
                "partial_interval_p50_ms": round(percentile(ms, 50), 1),
                "partial_interval_p95_ms": round(percentile(ms, 95), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
