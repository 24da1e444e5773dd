"""Live streams against a server: ours (kaldi-gstreamer-server dialect) or vosk-server.

Each client streams ``rounds`` clips in turn, a connection each, as a microphone
delivers them: the audio of frame *n* (0.25 s of PCM) exists from ``t0 + n/4`` s on,
never earlier. Then it ends the stream (``EOS`` / ``{"eof" : 1}``) and waits for the
server to close. Times are taken on the client.

* **Ours**: kaldi-gstreamer-server clients send audio as it comes and read replies on
  their own, so each frame goes out when it exists.
* **vosk-server**: its clients (``test_microphone.py``, ``test.py``) send a frame and
  wait for its reply before they send the next, and ``asr_server.py`` reads the next
  frame only after it has answered the last one. So the client here does the same: frame
  *n* goes out when it exists *and* frame *n-1* has been answered. A server that
  answers slower than real time therefore slows its clients down: their audio piles up
  on the client side instead of the server's.

Two figures per level keep that honest. ``wall_ratio``: how long a client took to
deliver its audio and the end of stream, over the audio's length (1.0 is real time).
``final latency``: from the moment the audio *ended* (``t0`` + its length, not the
moment the end of stream could be sent) to the last final. A level is *sustained* when
no stream failed, the p95 final latency is at most :data:`SUSTAIN_LIMIT_S` and every
client stayed within :data:`WALL_LIMIT` of real time.

Per level also: CPU of the server's processes (with the descendants they reaped) per
audio second, and how busy the machine's CPUs were (``/proc/stat``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import websockets

from benchmarks.common import RAW_CAPS
from harness.measure import cpu_busy, cpu_mark, cpu_seconds, percentile
from ksc.client import speech_url

FRAME_BYTES = 8000  # 0.25 s of 16 kHz s16 mono
FRAME_S = 0.25
SUSTAIN_LIMIT_S = 1.0
#: A client that needed more than this times its audio's length was held back.
WALL_LIMIT = 1.05
REAP_WAIT_S = 1.0
VOSK_EOF = '{"eof" : 1}'


@dataclass
class StreamResult:
    audio_s: float
    t0: float = 0.0  # when the first frame existed
    eos_at: float = 0.0
    closed_at: float = 0.0
    final_at: float = 0.0
    partial_at: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def audio_end(self) -> float:
        return self.t0 + self.audio_s

    @property
    def final_latency(self) -> float:
        # A final the endpointer sent before the end of the stream: the close ends it.
        end = self.final_at if self.final_at >= self.eos_at else self.closed_at
        return end - self.audio_end

    @property
    def wall_ratio(self) -> float:
        return (self.eos_at - self.t0) / self.audio_s if self.audio_s else 1.0

    @property
    def text(self) -> str:
        return " ".join(t for t in self.texts if t)

    def partial_intervals(self) -> list[float]:
        """Gaps between partials while audio flows (after the first partial, before EOS)."""
        times = [t for t in self.partial_at if t <= self.eos_at]
        return [b - a for a, b in itertools.pairwise(times)]


async def _until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


async def stream_ours(base: str, pcm: bytes) -> StreamResult:
    """kaldi-gstreamer-server's protocol: frames as they exist, replies read meanwhile."""
    result = StreamResult(audio_s=len(pcm) / 32000)

    async def send(ws: Any) -> None:
        result.t0 = time.monotonic()
        for n, frame in enumerate(_frames(pcm)):
            await _until(result.t0 + n * FRAME_S)
            await ws.send(frame)
        await _until(result.audio_end)
        result.eos_at = time.monotonic()
        await ws.send("EOS")

    try:
        async with websockets.connect(speech_url(base, RAW_CAPS), max_size=None) as ws:
            sender = asyncio.create_task(send(ws))
            async for raw in ws:
                message = json.loads(raw)
                if message.get("status", 0) != 0:
                    result.error = message.get("message", str(message))
                res = message.get("result")
                if res is None:
                    continue
                if res.get("final"):
                    result.final_at = time.monotonic()
                    result.texts.append(str(res["hypotheses"][0]["transcript"]))
                else:
                    result.partial_at.append(time.monotonic())
            await sender
    except (OSError, websockets.WebSocketException) as exc:
        result.error = repr(exc)
    result.closed_at = time.monotonic()
    return result


async def stream_vosk(url: str, pcm: bytes) -> StreamResult:
    """vosk-server's protocol as its clients speak it: each frame waits for the reply to
    the one before."""
    result = StreamResult(audio_s=len(pcm) / 32000)

    def note(raw: str | bytes) -> None:
        message = json.loads(raw)
        if "text" in message:
            result.final_at = time.monotonic()
            result.texts.append(str(message["text"]))
        elif message.get("partial"):
            result.partial_at.append(time.monotonic())

    try:
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"config": {"sample_rate": 16000}}))
            result.t0 = time.monotonic()
            for n, frame in enumerate(_frames(pcm)):
                await _until(result.t0 + n * FRAME_S)
                await ws.send(frame)
                note(await ws.recv())
            await _until(result.audio_end)
            result.eos_at = time.monotonic()
            await ws.send(VOSK_EOF)
            note(await ws.recv())
            async for _ in ws:  # the server closes after the last result
                pass
    except (OSError, websockets.WebSocketException) as exc:
        result.error = repr(exc)
    result.closed_at = time.monotonic()
    return result


async def level(
    kind: str,
    url: str,
    clips: list[bytes],
    concurrency: int,
    server_pids: Mapping[str, int] | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """``concurrency`` clients at once (started 50 ms apart), each streaming ``rounds``
    clips in turn (taken in turn from ``clips``).

    ``server_pids``: the server's processes by name; their CPU and that of the
    descendants they reaped (a worker's decoding processes) is counted per audio second,
    in all and per process (``<name>`` its own, ``<name>_children`` the reaped ones')."""
    client = stream_ours if kind == "ours" else stream_vosk
    pids = dict(server_pids or {})

    def server_cpu() -> dict[str, float]:
        parts = {}
        for name, pid in pids.items():
            own = cpu_seconds(pid)
            parts[name] = own
            parts[f"{name}_children"] = cpu_seconds(pid, children=True) - own
        return parts

    cpu_before, busy_before = server_cpu(), cpu_mark()

    async def one(i: int) -> list[StreamResult]:
        await asyncio.sleep(i * 0.05)
        out = []
        for k in range(rounds):
            out.append(await client(url, clips[(i + k * concurrency) % len(clips)]))
        return out

    started = time.monotonic()
    per_client = await asyncio.gather(*(one(i) for i in range(concurrency)))
    ended = time.monotonic()
    busy = cpu_busy(busy_before)
    results = [r for rs in per_client for r in rs]
    latencies = [r.final_latency for r in results]
    walls = [r.wall_ratio for r in results]
    audio = sum(r.audio_s for r in results)
    p95 = percentile(latencies, 95)
    errors = [r.error for r in results if r.error]
    cpu, by_process = None, None
    if pids:
        await asyncio.sleep(REAP_WAIT_S)  # the last decoding processes end after the close
        after = server_cpu()
        spent = {k: after[k] - cpu_before[k] for k in after}
        cpu = round(sum(spent.values()) / audio, 3)
        by_process = {k: round(v / audio, 4) for k, v in spent.items() if v > 0}
    return {
        "concurrency": concurrency,
        "rounds": rounds,
        "final_latency_s": [round(x, 3) for x in latencies],
        "final_latency_p50_s": round(percentile(latencies, 50), 3),
        "final_latency_p95_s": round(p95, 3),
        "wall_ratio_max": round(max(walls), 3),
        "wall_ratio_p50": round(percentile(walls, 50), 3),
        "partial_intervals_s": [round(x, 3) for r in results for x in r.partial_intervals()],
        "throughput_audio_s_per_s": round(audio / (ended - started), 3),
        "server_cpu_per_audio_s": cpu,
        "server_cpu_per_audio_s_by_process": by_process,
        "cpu_busy": round(busy, 3),
        "sustained": not errors and p95 <= SUSTAIN_LIMIT_S and max(walls) <= WALL_LIMIT,
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

    from benchmarks.common import clips, cluster, redis_pid
    from harness.cluster import redis_server

    parser = argparse.ArgumentParser(description="live streams against a private cluster")
    parser.add_argument("--levels", default="1,2", help="comma-separated concurrency levels")
    parser.add_argument("--clips", type=int, default=4, help="the N longest test clips")
    parser.add_argument("--rounds", type=int, default=1, help="clips per client, in turn")
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
        pids = {"gateway": cl["gateway_pid"], "worker": cl["worker_pid"], "redis": redis_pid(url)}
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
            row = asyncio.run(level("ours", cl["ws"], pcms, c, pids, args.rounds))
            if spy is not None:
                spy.wait()
            intervals += row["partial_intervals_s"]
            print(json.dumps({k: v for k, v in row.items() if k not in ("texts",)}))
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
